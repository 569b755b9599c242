"""The manifest: what the lake holds, so that runs redo nothing and lose nothing.

* :mod:`~harvester.manifest.model` - the data: a small head and one partition per
  (feed, month) (pure);
* :mod:`~harvester.manifest.io` - reading and writing them by compare-and-set;
* :mod:`~harvester.manifest.legacy` - the version 1 manifest (one object per window),
  read once to migrate a lake written by an older harvester.
"""
