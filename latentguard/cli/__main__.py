"""``python -m latentguard.cli COMMAND [flags]``."""
import sys

from latentguard.cli import main

sys.exit(main())
