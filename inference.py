"""Check prompts with Latent Guard: one prompt per line in, a verdict per prompt out.

Compatible with the released script (``--file_path``, ``--threshold``, and the final list of 0/1
labels), with the released weights and CoPro ID concepts downloaded on first use. The command lives
in :mod:`latentguard.cli.infer`, the logic in :class:`latentguard.guard.LatentGuard`.

    python inference.py --file_path prompts.txt --explain --output verdicts.csv
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
