"""``python -m ppctl``."""

import sys

from ppctl.main import main

sys.exit(main())
