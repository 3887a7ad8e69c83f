"""``python -m deeprank``: the same as the ``deeprank`` command."""

import sys

from .cli import main

sys.exit(main())
