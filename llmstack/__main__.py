"""``python -m llmstack``."""

import sys

from .cli import main

sys.exit(main())
