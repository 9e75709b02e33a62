"""``python -m kvpio_mapping``: the ``kvpio`` command line."""

import sys

from .cli import main

sys.exit(main())
