"""Train the Latent Guard Embedding Mapping Layer on CoPro (the paper's recipe by default).

Reads prompt embeddings from the store built by ``prepare.py`` (or encodes on the fly with
--no-store), trains with the released contrastive loss and saves the final weights as
OUTPUT_DIR/model_parameters.pth (released format), as the released main.py does. The explicit ID AUC
on validation data is logged every --val-every epochs; --keep-best also saves the best of those as best.pth.
Interrupt at any time: the same command resumes exactly where it stopped.

Examples:
  python prepare.py && python main.py                 # paper settings: 1,001 epochs, batch 64, AdamW 1e-3
  python main.py --seed 1 --output-dir runs/seed1
  python main.py --epochs 200 --lr 3e-3 --device cuda:1
  python main.py --output-dir runs/seed1 --epochs 2000   # continue a finished run for more epochs
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from ..errors import LatentGuardError
from .common import (
    RESUMABLE,
    SCHEMA,
    _RenamedFlag,
    cli_entry,
    common_parser,
    load_command_config,
    prepare_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train the Embedding Mapping Layer of Latent Guard on CoPro with the released contrastive loss.\n"
        "Outputs in --output-dir: model_parameters.pth (the final weights, released format) and its\n"
        "calibrated threshold (model_parameters.threshold.yaml); best.pth with --keep-best; last.pth,\n"
        "resume.pt (model + optimizer + sampler state), train_log.jsonl, config.yaml.",
        epilog="Flags override single keys of the config file. Re-running the same command after an\n"
        "interruption resumes the run; a finished run is extended by passing a larger --epochs.\n"
        "Build the embedding store first: python prepare.py (same --dataset/--encoder/--store-dir).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_parser()],
    )
    parser.add_argument("--output-dir", help="run directory for checkpoints and logs (config: output_dir, "
                        f"default {SCHEMA.output_dir})")
    parser.add_argument("--epochs", type=int, help="epochs; one epoch = one pair per ID concept "
                        f"(config: train.epochs, default {SCHEMA.train.epochs})")
    parser.add_argument("--batch-size", type=int, help="concepts per step (config: train.batch_size, default "
                        f"{SCHEMA.train.batch_size})")
    parser.add_argument("--lr", type=float, help=f"AdamW learning rate (config: train.lr, default {SCHEMA.train.lr})")
    parser.add_argument("--seed", type=int, help="seed of the initial weights and of the sampling (config: train.seed, "
                        f"default {SCHEMA.train.seed})")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                        help="continue from OUTPUT_DIR/resume.pt (or PATH), restoring optimizer and sampler state; "
                        "without this flag an existing OUTPUT_DIR/resume.pt is resumed anyway")
    parser.add_argument("--no-store", action="store_true", default=None,
                        help="encode prompts on the fly instead of reading the embedding store "
                        "(config: train.no_store)")
    parser.add_argument("--no-cache", dest="no_store", nargs=0, action=_RenamedFlag, new="--no-store",
                        help=argparse.SUPPRESS)
    parser.add_argument("--val-every", type=int, help="epochs between validation AUC checks (config: train.val_every, "
                        f"default {SCHEMA.train.val_every})")
    parser.add_argument("--keep-best", action="store_true",
                        help="also save the weights with the best validation AUC as best.pth, with their own threshold "
                        "(config: train.keep_best; default off: the released code keeps only the final weights)")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in an --output-dir that holds a previous main.py run, replacing that "
                             "run's own files (never a file main.py did not write)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files are still written)")
    return parser


def open_source(cfg, device, needed: list[str], args: argparse.Namespace):
    """The embedding source of this run: the prepared store, or the encoder itself with --no-store.

    The store is found without loading the encoder when prepare.py recorded which store this
    encoder request maps to; otherwise the encoder is loaded once to learn its identity.
    """
    from ..encoders import load_encoder_from_config
    from ..store.locate import open_configured_store
    from ..store.sources import EncoderSource

    if cfg.train.no_store:
        encoder = load_encoder_from_config(cfg, device)
        return EncoderSource(encoder, batch_size=cfg.encoder.batch_size), "encoder on the fly (--no-store)"
    no_store = (f"no embedding store for encoder {cfg.encoder.name} under {cfg.store_dir}; run "
                f"`{prepare_command(cfg, args)}` first (or pass --no-store to encode on the fly)")
    store, _ = open_configured_store(cfg, device=device, no_store=no_store)  # an encoder loaded to find it is dropped
    path = store.path
    missing = store.missing(needed)
    if missing:
        raise LatentGuardError(f"embedding store {path} lacks {len(missing)} of the {len(needed)} texts training "
                               f"needs (e.g. {missing[0][:60]!r}); run `{prepare_command(cfg, args)}` first "
                               "(or pass --no-store to encode on the fly)")
    return store, f"embedding store {path} ({store.dtype}, {len(store)} texts)"


@cli_entry(on_interrupt=RESUMABLE)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_command_config(args, {
        "output_dir": args.output_dir,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "train.val_every": args.val_every,
        "train.no_store": True if args.no_store else None,
        "train.keep_best": True if args.keep_best else None,
    })

    if cfg.recipe.name == "open":
        return _run_open_recipe(cfg, args)

    import yaml

    from ..data.copro import load_copro
    from ..encoders.precision import resolve_device
    from ..io import atomic_write_text, validate_dir_path
    from ..train.trainer import LOG_NAME, RUN_OUTPUTS, build_trainer, is_training_run, training_texts
    from .fetch import validate_fetchable
    from .rundir import claim_run_dir, record_outputs, refuse_unrecorded_outputs

    device = resolve_device(cfg.device)
    output_dir = validate_dir_path(cfg.output_dir, "--output-dir")  # a file fails now; nothing is created yet
    refuse_other_recipe(output_dir, "paper")  # --force included: it replaces only a paper-recipe run's own files
    validate_fetchable(cfg, dataset=True, encoder=bool(cfg.train.no_store))  # offline: refused before any download
    copro = load_copro(cfg.dataset, valid_size=cfg.data.valid_size, seed=cfg.data.seed)
    print(f"dataset {copro.path}: {copro.summary()}")
    started = time.perf_counter()
    source, described = open_source(cfg, device, training_texts(copro), args)
    print(f"embeddings: {described} (ready in {time.perf_counter() - started:.1f} s)")
    inputs = [args.config, cfg.dataset, args.resume if isinstance(args.resume, str) else None]
    previous = claim_run_dir(output_dir, "main.py", writes=RUN_OUTPUTS, inputs=inputs,
                             previous_run=is_training_run)  # inputs are valid: this run owns the directory now
    refuse_unrecorded_outputs(output_dir, "main.py", RUN_OUTPUTS, appended=(LOG_NAME,))  # before anything is written

    def record(*paths) -> None:  # what main.py writes is recorded as its own at once, a rerun replaces only that
        record_outputs(output_dir, "main.py", [p for p in paths if p is not None], appended=(LOG_NAME,))

    resume = args.resume if args.resume in (None, True) else Path(args.resume)
    if args.force:
        if args.resume is not None:
            raise LatentGuardError("--force starts a new run and --resume continues one; give one of them")
        resume = "replace" if previous else None
    trainer = build_trainer(cfg, copro, source, output_dir=output_dir, device=device, resume=resume,
                            progress=not args.no_progress)
    trainer.on_write = record
    atomic_write_text(output_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    record(output_dir / "config.yaml")
    opts = trainer.options
    n_batches = trainer.sampler.num_batches(opts.batch_size)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"model: in_dim {trainer.model.in_dim}, {trainer.model.num_heads} heads x {trainer.model.head_dim}, "
          f"out {trainer.model.out_dim} ({n_params / 1e6:.2f} M parameters) on {device}")
    print(f"training: {len(trainer.sampler)} concepts, {n_batches} steps/epoch, {opts.epochs} epochs "
          f"({opts.epochs * n_batches} steps), AdamW lr {opts.lr:g} wd {opts.weight_decay:g}, seed {opts.seed}; "
          f"validation every {opts.val_every} epochs on {len(trainer.valid)} ID_valid_data pairs")
    if trainer.resumed_from is not None:
        print(f"resuming from {trainer.resume_path if resume in (None, True) else resume}: {trainer.epoch} epochs "
              f"+ {trainer.step_in_epoch} steps done (step {trainer.global_step})")
    if not trainer.valid and opts.keep_best:
        print("note: no validation data, so no best.pth; model_parameters.pth holds the final weights")
    if trainer.epoch >= opts.epochs:
        print(f"already trained for {trainer.epoch} epochs (pass a larger --epochs to continue)")

    result = trainer.run()
    best = (f"best val AUC {result.best_auc:.4f} at epoch {result.best_epoch}" if result.best_auc is not None
            else "no validation (model_parameters.pth = last epoch)")
    loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "n/a"
    print(f"done: {result.epochs} epochs, {result.steps} steps, final loss {loss}, {best} "
          f"({result.seconds:.1f} s this session)")
    from ..decision.threshold import calibration_path
    from ..train.monitor import save_bundle, save_validation_threshold

    for weights in (result.weights_path, result.best_path):
        calibration = save_validation_threshold(trainer, weights) if weights is not None else None
        if calibration is not None:
            record(calibration_path(weights))
            print(f"  threshold:    {calibration.threshold:.4f} for {weights.name} (max accuracy "
                  f"{calibration.accuracy:.3f} "
                  f"on the validation split) saved to {calibration_path(weights)}; inference.py uses it with those "
                  "weights")
        if weights is not None:
            try:  # an extra way to share the weights: the run's own outputs above stand without it
                bundle = save_bundle(trainer, weights, calibration, copro.concepts("ID"), cfg)
                record(bundle)
                print(f"  bundle:       {bundle} (weights, encoder, blacklist, threshold: inference.py --guard)")
            except LatentGuardError as exc:
                print(f"  bundle:       not written ({exc})")
    print(f"  weights:      {result.weights_path} (final epoch)")
    if result.best_path is not None:
        print(f"  best weights: {result.best_path} (epoch {result.best_epoch})")
    print(f"  last weights: {result.last_path}")
    print(f"  resume state: {result.resume_path}")
    print(f"  log:          {result.log_path}")
    return 0


def _run_open_recipe(cfg, args: argparse.Namespace) -> int:
    """main.py with ``recipe.name: open`` (configs/mini.yaml): the project's recipe on open data."""
    import yaml

    from ..encoders.precision import resolve_device
    from ..io import atomic_write_text, validate_dir_path
    from ..train.recipe import BUNDLE, LOG, RECORD, RESUME, train_open_recipe
    from ..train.recipe_rundir import changed_settings
    from .rundir import claim_run_dir, validate_ownership

    if args.force or args.resume not in (None, True):
        raise LatentGuardError("--force and --resume PATH apply to the paper's recipe; an open-recipe run resumes "
                               "from its own OUTPUT_DIR/resume.pt (delete the directory to start over)")
    device = resolve_device(cfg.device)
    output_dir = validate_dir_path(cfg.output_dir, "--output-dir")
    refuse_other_recipe(output_dir, "open")
    inputs = [args.config, cfg.recipe.copro, cfg.recipe.coprov2, cfg.recipe.captions, cfg.recipe.concepts]
    writes = (RESUME, LOG, BUNDLE, "config.yaml", RECORD)
    validate_ownership(output_dir, "main.py", writes=writes, inputs=inputs)  # another's folder: refused at once

    def claim() -> None:  # once the inputs are read and checked: a run refused on them leaves no folder behind
        claim_run_dir(output_dir, "main.py", writes=writes, inputs=inputs)
        config_file = output_dir / "config.yaml"
        finished = (output_dir / RECORD).is_file()
        if config_file.is_file() and ((output_dir / RESUME).is_file() or finished):
            # What the run's weights depend on must match, for a finished run too (its resume.pt deleted, say);
            # other sections (serve, bulk...) may differ.
            before = _saved_config(config_file)
            changed = changed_settings(before, cfg.to_dict())
            if changed:
                raise LatentGuardError(f"{output_dir} holds {'a finished' if finished else 'an'} open-recipe run with "
                                       f"other {', '.join(changed)} settings ({config_file}); use another --output-dir")
        atomic_write_text(config_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    print(f"open recipe: {cfg.recipe.steps} steps of {cfg.recipe.prompts_per_step} prompts, encoder "
          f"{cfg.encoder.name}, blacklist {cfg.recipe.concepts}, on {device}")
    run = train_open_recipe(cfg, output_dir, device, progress=not args.no_progress, claim=claim)
    print(f"done: {run.steps} steps in {run.seconds:.0f} s; threshold {run.threshold:.4f} (at most "
          f"{cfg.recipe.target_fpr:.0%} of held-out captions flagged); AUROC {run.valid_auc:.3f} (training unsafe "
          "prompts against held-out captions)")
    print(f"  bundle: {run.bundle} (latentguard ... --guard {run.bundle})")
    return 0


def refuse_other_recipe(output_dir: Path, recipe: str) -> None:
    """Refuse (one line) a run of ``recipe`` into a folder holding a main.py run of the other recipe.

    Each recipe replaces only its own files: a paper-recipe run (``--force`` too) over an open-recipe run had
    replaced its resume.pt, log and config.yaml and left its ``bundle/`` and ``recipe_record.json`` beside the
    new weights, describing weights no longer there; the other way round, the paper run's weights would stay
    beside an open-recipe bundle. A run is known by the files only its recipe writes, or by its config.yaml.
    """
    from ..train.recipe import BUNDLE, RECORD
    from ..train.trainer import BEST_NAME, LAST_NAME, WEIGHTS_NAME, is_training_run
    from .rundir import run_record

    if not output_dir.is_dir():
        return
    other = "open" if recipe == "paper" else "paper"
    marks = (RECORD, BUNDLE) if other == "open" else (WEIGHTS_NAME, LAST_NAME, BEST_NAME, "model_parameters_bundle")
    found = next((name for name in marks if os.path.lexists(output_dir / name)), None)
    if found is None and other == "paper" and is_training_run(output_dir):
        found = "resume.pt"
    if found is None and "main.py" in run_record(output_dir) and (output_dir / "config.yaml").is_file():
        with contextlib.suppress(LatentGuardError):  # a damaged config.yaml is refused where it is read
            recorded = _saved_config(output_dir / "config.yaml").get("recipe")
            if (recorded.get("name", "paper") if isinstance(recorded, dict) else "paper") == other:
                found = "config.yaml"  # a run stopped before its first weights: its settings name its recipe
    if found is not None:
        raise LatentGuardError(f"--output-dir {output_dir} holds {'an' if other == 'open' else 'a'} {other}-recipe "
                               f"main.py run ({found}); a {recipe}-recipe run never trains into it, --force "
                               "included (each replaces only its own files): choose another --output-dir")


def _saved_config(path) -> dict:
    """The settings an open-recipe run saved in its ``config.yaml``; a damaged one is one line naming it."""
    from ..yaml_files import read_yaml

    how = ("restore it (or write there the settings the run began with), or choose another --output-dir; its "
           "weights are not continued under settings that cannot be read")
    try:
        saved = read_yaml(path, "run config") or {}
    except LatentGuardError as exc:
        raise LatentGuardError(f"{str(exc).removesuffix('; fix the file')}: the settings of the run in "
                               f"{path.parent}; {how}") from None
    if not isinstance(saved, dict):
        raise LatentGuardError(f"{path}: not the settings of a run (a YAML mapping); {how}")
    return saved


if __name__ == "__main__":
    sys.exit(main())
