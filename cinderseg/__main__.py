"""``python -m cinderseg``: the command line (see :mod:`cinderseg.cli`)."""

import sys

from cinderseg.cli import main

sys.exit(main())
