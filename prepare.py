#!/usr/bin/env python
"""Encode every CoPro text once into the on-disk embedding store (`python prepare.py --help`).

The command lives in latentguard/cli/prepare.py; this file keeps the released name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
