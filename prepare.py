#!/usr/bin/env python
"""Encode every CoPro text once into the on-disk embedding store of the chosen text encoder.

Training and evaluation then read embeddings from the store instead of running the encoder. The
store is keyed by the encoder's identity, so two encoders never mix, and it is crash-safe: stop
this at any moment (Ctrl-C, kill -9) and the same command resumes where it stopped. A re-run on a
complete store reports that nothing is missing; when the encoder's files are unchanged since the
last run it does so without loading the encoder at all.

Examples:
  python prepare.py                                   # released CoPro (downloaded), CLIP ViT-L/14
  python prepare.py --dataset my_copro.json --cache-dir /data/lg-cache --batch-size 128
  python prepare.py --encoder ./my-finetuned-clip --dtype float32
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
