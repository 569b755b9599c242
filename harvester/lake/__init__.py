"""The Hive-layout lake: where rows go and how they get there whole.

* :mod:`~harvester.lake.layout` - object names (pure);
* :mod:`~harvester.lake.spool` - a span's rows, spooled to local disk as they arrive;
* :mod:`~harvester.lake.days` - a day's rows from spools and the day's old file (Arrow);
* :mod:`~harvester.lake.writer` - writing a day's file by compare-and-set.
"""
