#!/usr/bin/env python
"""Train the Latent Guard Embedding Mapping Layer on CoPro (`python main.py --help`).

The command lives in latentguard/cli/train.py; this file keeps the released name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
