"""``python -m memorix_pg.cli``: the ``memorix-pg`` command, for when the script is not on PATH."""

import sys

from . import main

sys.exit(main())
