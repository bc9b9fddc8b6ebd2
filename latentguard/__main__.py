"""``python -m latentguard COMMAND [flags]``: the same commands as the ``latentguard`` console script."""
import sys

from latentguard.cli import main

sys.exit(main())
