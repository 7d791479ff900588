"""``python -m mtlkit`` == ``mtlkit``."""

import sys

from mtlkit.cli.main import main

sys.exit(main())
