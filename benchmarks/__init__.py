"""Benchmarks of the harvester against a simulated API, a ceiling, a dlt peer and a naive script.

Run ``python -m benchmarks.run`` (``make bench``) for the full suite, or
``python -m benchmarks.run --smoke`` for a seconds-long check that the harness works.
See ``benchmarks/README.md`` for what every number means.
"""
