"""Threat Grid IOC feed harvester: an async bulk archiver into a Parquet data lake."""

__version__ = "0.1.0"
