"""``python -m peftcore.cli``."""

import sys

from peftcore.cli import main

sys.exit(main())
