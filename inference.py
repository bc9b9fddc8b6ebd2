"""Check a file of prompts with Latent Guard, as the released inference.py (`python inference.py --help`).

The command lives in latentguard/cli/infer.py; this file keeps the released name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
