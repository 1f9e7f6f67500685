"""``python -m d2lightning`` is the ``d2lightning`` command."""

import sys

from d2lightning.cli import main

sys.exit(main())
