"""``python -m deeplinear.app``: the ``deeplinear`` program."""

import sys

from deeplinear.app.cli import main

sys.exit(main())
