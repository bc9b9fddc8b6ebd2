"""Encode every CoPro text once into the on-disk embedding store of the chosen text encoder.

Training and evaluation then read embeddings from the store instead of running the encoder. The
store is keyed by the encoder's identity, so two encoders never mix, and it is crash-safe: stop
this at any moment (Ctrl-C, kill -9) and the same command resumes where it stopped. A re-run on a
complete store reports that nothing is missing; when the encoder's files are unchanged since the
last run it does so without loading the encoder at all.

Examples:
  python prepare.py                                   # released CoPro (downloaded), CLIP ViT-L/14
  python prepare.py --dataset my_copro.json --store-dir /data/lg-stores --batch-size 128
  python prepare.py --encoder ./my-finetuned-clip --dtype float32
  python prepare.py --guard mini --dataset my_copro.json   # the store test.py --guard mini reads (its encoder)
  python prepare.py --repair cache/clip-vit-large-patch14-0123456789ab   # a damaged store, as an error tells
"""
from __future__ import annotations

import argparse
import sys
import time

from ..constants import STORE_DTYPES
from .common import RESUMABLE, SCHEMA, bundle_overrides, bundle_parser, cli_entry, common_parser, load_command_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Encode all CoPro texts (concepts, prompts of every split, synonym/adversarial test\n"
        "and validation variants) into a resumable on-disk embedding store, one per text encoder.\n"
        "main.py and test.py then read embeddings from the store instead of running the encoder.",
        epilog="Flags override single keys of the config file. Interrupt at any time; run the same\n"
        "command again to resume.\n\n"
        "examples:\n"
        "  python prepare.py                                  # released CoPro (downloaded), CLIP ViT-L/14\n"
        "  python prepare.py --device cuda --batch-size 256\n"
        "  python prepare.py --encoder ./my-finetuned-clip --dtype float32\n"
        "  python prepare.py --guard mini --dataset my_copro.json  # the store of test.py --guard mini\n"
        "  python prepare.py --repair cache/clip-vit-large-patch14-0123456789ab  # the STORE an error names",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser(), bundle_parser()],
    )
    parser.add_argument("--dtype", choices=list(STORE_DTYPES),
                        help="on-disk precision of the store (config: store.dtype, default "
                        f"{SCHEMA.store.dtype}; float16 halves the size, ~15 GB for full CoPro)")
    parser.add_argument("--batch-size", type=int, help="texts per encoder batch (config: encoder.batch_size, "
                        f"default {SCHEMA.encoder.batch_size})")
    parser.add_argument("--repair", metavar="STORE", help="repair the damaged store directory STORE (holding its "
                        "lock; keeps intact rows, saves the old index beside it, says what it did) and exit")
    return parser


@cli_entry(on_interrupt=RESUMABLE)
def main(argv: list[str] | None = None) -> int:
    from ..data.copro import load_copro
    from ..store.locate import open_configured_store, validate_store_dir

    args = build_parser().parse_args(argv)
    if args.repair:
        from ..store.repair import repair_store

        print(repair_store(args.repair))
        return 0
    cfg = load_command_config(args, {
        "store.dtype": args.dtype,
        "encoder.batch_size": args.batch_size,
        **bundle_overrides(args),
    })
    from ..hub.settings import config_with_bundle

    cfg, _ = config_with_bundle(cfg)  # --guard: the bundle's encoder and its settings (trimmed padding...), as test.py
    validate_store_dir(cfg.store_dir)  # a file here fails now, not after loading the dataset
    from .fetch import validate_fetchable

    validate_fetchable(cfg, dataset=True, encoder=True)  # offline (HF_HUB_OFFLINE): refused before any download

    copro = load_copro(cfg.dataset, valid_size=cfg.data.valid_size, seed=cfg.data.seed)
    texts = copro.all_texts()
    print(f"dataset {copro.path}: {copro.summary()}")
    print(f"{len(texts)} distinct texts to have in the store")

    # Cheap path: the same encoder files as last time -> the store is found without loading the encoder.
    started = time.perf_counter()
    store, encoder = open_configured_store(cfg, create=True)
    if encoder is None:
        if not store.missing(texts):
            print(f"nothing missing: all {len(texts)} texts are already in {store.path} "
                  f"({store.dtype}, {store.disk_bytes() / 1e9:.2f} GB); encoder not loaded")
            return 0
        from ..encoders import load_encoder_from_config

        store, encoder = open_configured_store(cfg, encoder=load_encoder_from_config(cfg), create=True)
    print(f"encoder {encoder.identity} on {encoder.device} (loaded in {time.perf_counter() - started:.1f} s)")
    todo = store.missing(texts)
    if not todo:
        print(f"nothing missing: all {len(texts)} texts are already in {store.path}")
        return 0
    print(f"encoding {len(todo)} texts ({len(texts) - len(todo)} already stored) into {store.path} "
          f"[{store.dtype}, batch {cfg.encoder.batch_size}]")
    started = time.perf_counter()
    done = store.build(todo, encoder, batch_size=cfg.encoder.batch_size, progress=True)
    elapsed = time.perf_counter() - started
    print(f"done: encoded {done} texts in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.1f} texts/s); "
          f"store holds {len(store)} texts, {store.disk_bytes() / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
