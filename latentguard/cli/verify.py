"""``latentguard verify``: check this installation against the released model's own scores
(release parity, :mod:`latentguard.eval.parity`). Exit codes: 0 pass, 1 mismatch, 2 setup error."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

from ..errors import LatentGuardError
from ..eval.parity import (
    DEFAULT_TOLERANCE,
    RELEASED_SCORES,
    compare,
    read_fixture,
    render_table,
    score_rows,
    scored_text,
    verdict,
)
from .common import SCHEMA, bundle_overrides, bundle_parser, cli_entry, common_parser, load_command_config, load_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard verify",
        description="Check this installation against the released Latent Guard: recompute the released model's "
                    "scores on 84 CoPro test prompts and compare them row by row. --dataset names the CoPro JSON "
                    "whose concept lists and synonym/adversarial dictionaries are used.",
        epilog="Exit codes: 0 PASS, 1 a score or decision differs, 2 setup error. The released checkpoint, CLIP "
               "and CoPro are downloaded when missing, as inference.py does.",
        parents=[common_parser(store_dir=False), bundle_parser()])
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="mapping-layer weights (config: checkpoint; default: the released model_parameters.pth, "
                             "downloaded and SHA-256 checked when missing)")
    parser.add_argument("--fixture", default=str(RELEASED_SCORES), metavar="CSV",
                        help="released per-prompt scores (default: the file shipped in the package)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T",
                        help=f"largest allowed |ours - released| (default: {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="texts per encoder batch (config: encoder.batch_size, default "
                             f"{SCHEMA.encoder.batch_size})")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run the parity check; 0 pass, 1 mismatch, 2 setup error."""
    args = build_parser().parse_args(argv)
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise LatentGuardError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    cfg = load_command_config(args, {**bundle_overrides(args), "checkpoint": args.checkpoint,
                                     "encoder.batch_size": args.batch_size})
    from ..data.copro import load_copro
    from ..encoders import load_encoder_from_config
    from ..encoders.precision import resolve_device
    from ..hub.settings import config_with_bundle
    from ..io import git_blob_id, sha256_of
    from ..published import COPRO_GIT_BLOB, RELEASED_CHECKPOINT_SHA256
    from .fetch import validate_fetchable

    cfg, bundle = config_with_bundle(cfg)  # --guard: the bundle's encoder and weights
    # all that is missing at once, before any load; offline (HF_HUB_OFFLINE), nothing is downloaded
    validate_fetchable(cfg, dataset=True, checkpoint=bundle is None, encoder=True)
    rows = read_fixture(args.fixture)
    copro = load_copro(cfg.dataset)
    for row in rows:
        scored_text(row, copro)  # every text must be buildable before the slow loads
    device = resolve_device(cfg.device)
    encoder = load_encoder_from_config(cfg, device)
    checkpoint, model = load_model(cfg, encoder.hidden_size, device, bundle=bundle, identity=encoder.identity)
    batch_size = cfg.encoder.batch_size

    released_weights = RELEASED_CHECKPOINT_SHA256 in (sha256_of(checkpoint), bundle and bundle.source_sha256)
    released_data = git_blob_id(copro.path) == COPRO_GIT_BLOB
    print(f"fixture    {args.fixture} ({len(rows)} rows)")
    print(f"checkpoint {checkpoint} ({'the released weights' if released_weights else 'NOT the released weights'})")
    print(f"dataset    {copro.path} ({'the released CoPro' if released_data else 'NOT the released CoPro file'})")
    print(f"encoder    {encoder.identity} on {device}\n")
    scores = score_rows(rows, copro, encoder, model, batch_size=batch_size, device=device)
    checks = compare(rows, scores)
    print(render_table(checks, args.tolerance))
    passed, line = verdict(checks, args.tolerance)
    print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
