"""``python -m harvester``: the same as the ``harvester`` console script."""

import sys

from harvester.cli import main

sys.exit(main())
