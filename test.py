#!/usr/bin/env python
"""Evaluate Latent Guard: Table 1 on CoPro (six settings, calibrated threshold, baselines) or Table 2.

Run prepare.py first with the same --dataset/--encoder/--cache-dir: Table 1 reads every prompt's
embedding from the store, so a full evaluation is a scoring pass of seconds to minutes.

Examples:
  python test.py                                            # released checkpoint, released CoPro
  python test.py --checkpoint runs/default/best.pth --baselines all --bert-model bert-base-uncased
  python test.py --threshold 4.47 --output-dir runs/table1
  python test.py --external unsafe_diffusion.csv            # Table 2: CSV with header prompt,label
  python test.py --external unsafe.txt --external-safe safe.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
