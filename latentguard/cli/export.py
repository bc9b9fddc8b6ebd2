"""``latentguard export``: turn a guard (released-format weights with their calibration record, or a bundle with
other settings) into a self-describing bundle folder, and optionally publish it on the Hugging Face hub.

    latentguard export --checkpoint runs/seed1/model_parameters.pth --encoder ... --out my-guard
    latentguard export --out latent-guard --push-to-hub ORG/latent-guard      # the released guard, published
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .common import build_guard, cli_entry, common_parser, guard_overrides, guard_parser, load_command_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard export",
        description="Write a guard as one bundle folder (config.json, model.safetensors, concepts.yaml, README.md "
                    "model card, concept_vectors.safetensors) that LatentGuard.from_pretrained(FOLDER) and every "
                    "command's --guard load in one step. The guard is built from the same flags as inference.py: "
                    "by default the released weights (downloaded, SHA-256 checked), CLIP ViT-L/14, CoPro's ID "
                    "concepts and the released threshold; --checkpoint takes its calibration record along.",
        epilog="Scores from the bundle equal those from the .pth bit for bit in fp32 (docs/sharing.md). "
               "--push-to-hub needs credentials (hf auth login or HF_TOKEN).",
        parents=[common_parser(store_dir=False), guard_parser()])
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the bundle folder to write (new or empty; an existing bundle only with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace the bundle already in --out")
    parser.add_argument("--results", default=None, metavar="JSON",
                        help="test.py's results.json for these weights, shown in the model card (refused when it "
                             "was computed for other weights)")
    parser.add_argument("--license", default=None, metavar="ID",
                        help="license of the weights for the model card (default: bsd-3-clause for the released "
                             "weights, unstated otherwise)")
    parser.add_argument("--no-concept-vectors", action="store_true",
                        help="leave out concept_vectors.safetensors (the blacklist is then encoded at load)")
    parser.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                        help="also upload the bundle to this hub repo (created when missing)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..hub.write import claim_folder

    repo_id = args.push_to_hub
    token = None
    if repo_id:
        from ..hub.push import hub_token

        token = hub_token(repo_id)  # no credentials: refused before anything is loaded or written
    claim_folder(args.out, args.overwrite)  # a folder we may not write: refused before the slow loads
    cfg = load_command_config(args, guard_overrides(args))
    from ..hub.format import CARD, CONCEPTS, CONFIG, VECTORS, WEIGHTS
    from ..protected import protect_inputs, refuse_input

    protect_inputs([args.results])  # with the guard flags' files, registered as the config was loaded
    for name in (CONFIG, WEIGHTS, CONCEPTS, CARD, VECTORS):  # --concepts OUT/concepts.yaml: refused before the loads
        refuse_input(Path(args.out) / name, "--out")
    guard = build_guard(cfg)
    folder = guard.save_pretrained(args.out, overwrite=args.overwrite, concept_vectors=not args.no_concept_vectors,
                                   license=args.license, results=args.results, repo_id=repo_id)
    from ..guard.options import threshold_line
    from ..hub.bundle import Bundle

    bundle = Bundle(folder)
    weights = bundle.config["weights"]
    print(f"wrote bundle {folder}: {len(guard.concepts)} concepts, {threshold_line(guard)}, "
          f"encoder {guard.encoder.identity}")
    print(f"  model.safetensors SHA-256 {weights['sha256']}"
          + (f" (from released-format weights {weights['source_sha256']})" if weights["source_sha256"] else ""))
    print(f"  load it: LatentGuard.from_pretrained({str(folder)!r}) or python inference.py --guard {folder}")
    if repo_id:
        from ..hub.push import push_folder

        url = push_folder(folder, repo_id, private=True if args.private else None, token=token)
        print(f"pushed to hub repo {repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
