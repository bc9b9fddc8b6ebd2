#!/usr/bin/env python
"""Evaluate Latent Guard: Table 1 on CoPro, baselines, Table 2 (`python test.py --help`).

The command lives in latentguard/cli/evaluate.py; this file keeps the released name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
