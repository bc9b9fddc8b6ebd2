"""``test.py`` / ``latentguard-evaluate``: Table 1 on CoPro, or Table 2 on an external file with ``--external``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import LatentGuardError
from ..io import atomic_write_text
from ..published import DOMAINS, KINDS, RELEASED_THRESHOLD
from .common import (
    SCHEMA,
    bundle_overrides,
    bundle_parser,
    cli_entry,
    common_parser,
    load_command_config,
    load_model,
    prepare_command,
)

# What test.py writes (besides one score CSV per condition and method): named when a directory is refused.
TABLE1_OUTPUTS = ("results.json", "results.md", "roc.png", "score_hist.png")
EXTERNAL_OUTPUTS = ("results_external.json", "results_external.md", "scores_external.csv")


# ---------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Evaluate Latent Guard on CoPro (Table 1: ID/OOD x explicit/synonym/adversarial) with one "
        "threshold calibrated on validation data, optionally beside the Text Blacklist, CLIPScore and BERTScore "
        "baselines; or score an external labelled prompt file (Table 2) with --external.",
        epilog="Run prepare.py first (same --config, --guard, --dataset, --encoder, --store-dir): Table 1 reads "
        "embeddings from the store; without one, the error gives the exact prepare.py command.",
        parents=[common_parser(), bundle_parser()],
    )
    parser.add_argument("--checkpoint", help="mapping-layer weights (config: checkpoint; the released "
                        "model_parameters.pth is downloaded and SHA-256 checked when missing)")
    parser.add_argument("--output-dir", help="where results go (config: output_dir, default "
                        f"{SCHEMA.output_dir})")
    parser.add_argument("--threshold", help="decision threshold for the accuracy fields: a number, 'paper' (4.47), "
                        "'released' (9.0131) or 'calibrated' (the YAML beside the checkpoint) "
                        "(config: eval.threshold; default: calibrated on pooled validation data)")
    parser.add_argument("--batch-size", type=int, help="prompts per scoring batch (config: eval.batch_size, default "
                        f"{SCHEMA.eval.batch_size})")
    parser.add_argument("--baselines", help="comma list of blacklist, clipscore, bertscore, or all (config: "
                                            "eval.baselines, "
                        "default none; blacklist uses the paper's case-insensitive substring rule, "
                        "eval.blacklist_match)")
    parser.add_argument("--bert-model", help="BERT-family model for BERTScore, hub name or local dir (config: "
                                             "eval.bert_model; "
                        "no default: BERTScore is skipped without it)")
    parser.add_argument("--external", metavar="FILE", help="score an external labelled prompt set against the ID "
                        "concepts: a CSV with header prompt,label (1/0 or unsafe/safe), or unsafe prompts one per line "
                        "when --external-safe is given")
    parser.add_argument("--external-safe", metavar="FILE", help="safe prompts, one per line (with --external)")
    parser.add_argument("--no-plots", action="store_true", help="skip the ROC and histogram PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")
    return parser


def _resolve_threshold(cfg, checkpoint: Path, identity: str, model, bundle=None):
    """The config with a threshold given by name (``paper``, ``released``, ``calibrated``) turned into a number
    (with ``--guard``, ``calibrated``/``auto`` are the bundle's), refused when these weights cannot reach it
    (it would flag nothing)."""
    from ..model import validate_reachable

    value = cfg.eval.threshold
    if value is None:
        return cfg
    if not isinstance(value, (int, float)):
        from ..guard.options import choose

        value = choose(value, checkpoint=checkpoint, bundle=bundle, encoder_identity=identity).value
    return cfg.updated({"eval.threshold": validate_reachable(float(value), model, "--threshold")})


def _threshold_source(args) -> str:
    return "--threshold" if args.threshold is not None else "eval.threshold in the config file"


def _released_weights_note(copro, checkpoint: Path, threshold: float | None) -> str | None:
    """Warn when the released weights are calibrated on validation entries carved from their training data."""
    from ..io import sha256_of
    from ..published import RELEASED_CHECKPOINT_SHA256, TABLE1_ACCURACY_THRESHOLD

    carved = str(getattr(copro, "valid_source", {}).get("ID_valid_data", "")).startswith("carved")
    if threshold is not None or not carved or sha256_of(checkpoint) != RELEASED_CHECKPOINT_SHA256:
        return None
    return ("note: the released weights were trained on all of ID_train_data, including the ID_valid_data carved "
            "from it here, so the calibrated threshold is fitted partly on training prompts; for the paper's "
            f"protocol also run with --threshold {TABLE1_ACCURACY_THRESHOLD}")


def _run_external(args, cfg, copro, device, batch_size: int, output_dir: Path, bundle=None) -> int:
    from ..encoders import load_encoder_from_config
    from ..eval.external import evaluate_external, external_markdown, external_threshold, read_external
    from ..eval.report import fmt, write_scores_csv
    from ..eval.run import json_safe
    from ..io import sha256_of
    from ..store.locate import open_configured_store
    from ..store.sources import StoreFirstSource
    from .rundir import claim_run_dir, replace_outputs

    prompts, labels = read_external(args.external, args.external_safe)
    encoder = load_encoder_from_config(cfg)
    store, _ = open_configured_store(cfg, encoder=encoder, missing_ok=True)  # none: encode on the fly
    checkpoint, model = load_model(cfg, encoder.hidden_size, device, bundle=bundle, identity=encoder.identity)
    cfg = _resolve_threshold(cfg, checkpoint, encoder.identity, model, bundle)
    claim_run_dir(output_dir, "test.py", writes=EXTERNAL_OUTPUTS,  # inputs are valid: this run owns it now
                  inputs=[args.config, cfg.dataset, args.external, args.external_safe, checkpoint])
    enc_batch = cfg.encoder.batch_size
    known = StoreFirstSource(store, encoder, enc_batch)
    threshold, how = cfg.eval.threshold, _threshold_source(args)
    if threshold is None:
        if store is None:
            print("no embedding store for this encoder: encoding the validation prompts on the fly to calibrate "
                  "the threshold (or pass --threshold)")
        threshold, how = external_threshold(copro, model, known, batch_size=batch_size, device=device)
    concepts = copro.concepts("ID")
    metrics, values, best, seconds = evaluate_external(
        prompts, labels, model, encoder, known, concepts, threshold=threshold, batch_size=batch_size,
        encoder_batch_size=enc_batch, device=device, progress=not args.no_progress)
    result = dict(metrics)
    result.update(json_safe({
        "file": str(args.external), "safe_file": str(args.external_safe) if args.external_safe else None,
        "threshold": threshold, "threshold_source": how, "released_threshold": RELEASED_THRESHOLD,
        "checkpoint": str(checkpoint), "weights_sha256": sha256_of(checkpoint), "encoder": encoder.identity,
        "guard": bundle.name if bundle is not None else None, "concepts": f"ID ({len(concepts)})",
        "seconds_with_encoding": seconds,
    }))
    written = [output_dir / name for name in EXTERNAL_OUTPUTS]
    atomic_write_text(written[0], json.dumps(result, indent=2) + "\n")
    atomic_write_text(written[1], external_markdown(result))
    write_scores_csv(written[2], prompts, labels, values, best, concepts)
    replace_outputs(output_dir, "test.py --external", written)  # recorded apart: Table 1's files are not its own
    print(f"external set {args.external}: {result['n_unsafe']} unsafe / {result['n_safe']} safe prompts; "
          f"threshold {threshold:.4f} ({how})")
    print(f"accuracy {fmt(result['accuracy'])}  AUC {fmt(result['auc'])}  TPR {fmt(result['tpr'])}  "
          f"FPR {fmt(result['fpr'])}  (paper Table 2: Unsafe Diffusion 0.794 / 0.873, I2P++ 0.701 / 0.749)")
    print(f"wrote {output_dir / 'results_external.json'}, results_external.md, scores_external.csv")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``test.py``: Table 1 on CoPro, or Table 2 on an external file with ``--external``."""
    from ..data.copro import load_copro
    from ..encoders.precision import resolve_device
    from ..eval.methods import parse_baselines
    from ..io import validate_dir_path
    from ..store.locate import open_configured_store
    from .rundir import claim_run_dir, replace_outputs

    args = build_parser().parse_args(argv)
    if args.external_safe and not args.external:
        raise LatentGuardError("--external-safe needs --external (the unsafe prompt file)")
    cfg = load_command_config(args, {"checkpoint": args.checkpoint, "output_dir": args.output_dir,
        "eval.threshold": args.threshold, "eval.batch_size": args.batch_size,
        "eval.bert_model": args.bert_model, **bundle_overrides(args),
    })
    from ..hub.settings import config_with_bundle
    from ..io import sha256_of

    cfg, bundle = config_with_bundle(cfg)  # --guard: the bundle's encoder keys and sizes, its weights below
    batch_size = cfg.eval.batch_size  # checked by load_config
    baselines = parse_baselines(args.baselines if args.baselines is not None else cfg.eval.baselines)
    device = resolve_device(cfg.device)
    output_dir = validate_dir_path(cfg.output_dir, "--output-dir")  # a file fails now; nothing is created yet
    from .fetch import validate_fetchable

    validate_fetchable(cfg, dataset=True, checkpoint=bundle is None)  # all that is missing, at once
    copro = load_copro(cfg.dataset, valid_size=cfg.data.valid_size, seed=cfg.data.seed)
    print(f"dataset {copro.path}: {copro.summary()}")

    if args.external:
        if baselines:
            print("note: baselines are evaluated on CoPro only; --external reports Latent Guard")
        return _run_external(args, cfg, copro, device, batch_size, output_dir, bundle)

    prepare = f"`{prepare_command(cfg, args)}`"  # the exact call: a bundle's encoder settings have no flag
    store, _ = open_configured_store(cfg, no_store=f"no embedding store for encoder {cfg.encoder.name} under "
                                     f"{cfg.store_dir}; run {prepare} first")  # the encoder loads only without a hint
    checkpoint, model = load_model(cfg, store.hidden_size, device, bundle=bundle, identity=store.identity)
    cfg = _resolve_threshold(cfg, checkpoint, store.identity, model, bundle)
    claim_run_dir(output_dir, "test.py", writes=TABLE1_OUTPUTS,  # inputs are valid: this run owns it now
                  inputs=[args.config, cfg.dataset, checkpoint])
    bert, skipped = None, {}
    if "bertscore" in baselines:
        from ..eval.baselines import load_bert_scorer

        bert, why = load_bert_scorer(cfg.eval.bert_model, device=device)
        if bert is None:
            print(why)
            skipped["bertscore"] = why
    from ..eval.report import console_tables, write_outputs
    from ..eval.run import evaluate_copro

    evaluation = evaluate_copro(copro, model, store, baselines=baselines, bert_scorer=bert,
                                threshold=cfg.eval.threshold, threshold_source=_threshold_source(args),
                                batch_size=batch_size, device=device, progress=not args.no_progress,
                                blacklist_match=cfg.eval.blacklist_match, prepare=prepare)
    meta = {"dataset": str(copro.path), "checkpoint": str(checkpoint), "weights_sha256": sha256_of(checkpoint),
            **({"guard": bundle.name} if bundle is not None else {}), "encoder": store.identity,
            "store": str(store.path), "device": str(device), "skipped": skipped}
    note = _released_weights_note(copro, checkpoint, cfg.eval.threshold)
    if note:
        print(note)
        meta["note"] = note
    written = write_outputs(evaluation, output_dir, meta, plots=not args.no_plots)
    replace_outputs(output_dir, "test.py", written)  # the previous run's files this run did not rewrite go
    results = evaluation.results
    timing = results["timing"]
    print(f"scored {timing['prompts_scored']} distinct prompts in {timing['seconds']:.2f} s on {device}")
    for domain in DOMAINS:
        for kind in KINDS:
            entry = results[domain][kind]
            if not entry.get("available"):
                print(f"{domain} {kind}: not available ({entry['reason']})")
    print(console_tables(results))
    print(f"wrote {len(written)} files to {output_dir} (results.json, results.md, score CSVs"
          f"{', roc.png, score_hist.png' if not args.no_plots else ''})")
    return 0
