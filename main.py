#!/usr/bin/env python
"""Train the Latent Guard Embedding Mapping Layer on CoPro (the paper's recipe by default).

Reads prompt embeddings from the store built by ``prepare.py`` (or encodes on the fly with
--no-cache), trains with the released contrastive loss and saves the final weights as
OUTPUT_DIR/model_parameters.pth (released format), as the released main.py does. The explicit ID AUC
on validation data is logged every --val-every epochs; --keep-best also saves the best of those as best.pth.
Interrupt at any time: the same command resumes exactly where it stopped.

Examples:
  python prepare.py && python main.py                 # paper settings: 1,001 epochs, batch 64, AdamW 1e-3
  python main.py --seed 1 --output-dir runs/seed1
  python main.py --epochs 200 --lr 3e-3 --device cuda:1
  python main.py --output-dir runs/seed1 --epochs 2000   # continue a finished run for more epochs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this checkout's latentguard, even when not installed

from latentguard.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
