"""Training the Embedding Mapping Layer with the released contrastive objective (the released ``main.py``).

Faithful to the released ``main.py`` in what it computes (loss, sampling, optimiser, schedule), and
different in how: every prompt's keys/values are computed once per step with ``logit_matrix``
instead of once per (prompt, concept) pair, embeddings are streamed from the on-disk store one
batch at a time, and the run is resumable bit-for-bit (model, optimiser, sampler RNG and the
position inside the epoch are saved atomically, also on Ctrl-C).

Outputs in the run directory:

* ``model_parameters.pth`` - the final weights of the schedule, as the released ``main.py`` keeps
  them (it never reads validation data), a plain state dict in the released format;
* ``best.pth`` - only with ``train.keep_best`` (``--keep-best``): the weights with the best
  validation AUC (explicit ID AUC on ``ID_valid_data``, C_check = ID concepts), same format;
* ``last.pth`` - the latest weights, same format;
* ``resume.pt`` - everything needed to continue (``{"model": state_dict, ...}``, so
  ``load_mapping_layer`` reads it too);
* ``train_log.jsonl`` - one JSON record per step (step, epoch, loss, lr, steps_per_s) and one per
  validation (val_auc, best_auc).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..config import Config, ModelConfig, TrainConfig
from ..constants import BEST_CHECKPOINT, DEFAULT_CHECKPOINT
from ..errors import LatentGuardError
from ..io import atomic_torch_save, open_regular, refuse_links, unique
from ..model import EmbeddingMappingLayer, plain_state_dict
from ..scoring.logits import StopRequested, pinned, prefetch, to_device
from ..store.sources import EmbeddingSource, concept_vectors
from .monitor import explicit_auc
from .objective import ConceptPairSampler, contrastive_loss_from_logits, triplets_fingerprint
from .runlog import trim_log

WEIGHTS_NAME = DEFAULT_CHECKPOINT  # final weights of the schedule, as released
BEST_NAME = BEST_CHECKPOINT  # best validation AUC, opt-in (train.keep_best)
LAST_NAME = "last.pth"
RESUME_NAME = "resume.pt"
LOG_NAME = "train_log.jsonl"
RESUME_FORMAT = "latentguard-train-resume"
RESUME_VERSION = 1


@dataclass
class TrainResult:
    """What a run produced, for the CLI summary and for tests."""

    output_dir: Path
    best_path: Path | None  # best.pth, only with keep_best
    last_path: Path
    resume_path: Path
    log_path: Path
    epochs: int
    steps: int
    best_auc: float | None
    best_epoch: int | None
    last_loss: float | None
    resumed_from: int | None  # global step the run continued from, None when fresh
    seconds: float
    weights_path: Path | None = None  # model_parameters.pth: the final weights


def new_model(in_dim: int, model_cfg: ModelConfig, seed: int) -> EmbeddingMappingLayer:
    """A freshly initialised mapping layer; the seed fixes the weights without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbeddingMappingLayer(in_dim, model_cfg.num_heads, model_cfg.head_dim, model_cfg.out_dim)


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """One training run: the model, its optimiser, the sampler state and the checkpoints."""

    on_write: Callable[[Path], None] | None = None  # told of each file written, so main.py records it as its own

    def __init__(self, *, model: EmbeddingMappingLayer, sampler: ConceptPairSampler, source: EmbeddingSource,
                 concept_emb: torch.Tensor, valid: Sequence, valid_concept_emb: torch.Tensor | None,
                 options: TrainConfig, output_dir: str | Path, device: torch.device,
                 config: Config | None = None, progress: bool = True,
                 on_step: Callable[["Trainer"], None] | None = None, dataset: str | Path | None = None) -> None:
        self.device = device
        self.dataset = dataset  # the CoPro file, named when a resume finds other data
        self.model = model.to(device).train()
        self.sampler, self.source, self.options = sampler, source, options
        self.concept_emb = concept_emb.to(device)  # [C_train, in], row i = sampler.concepts[i]
        self.valid = list(valid)
        self.valid_concept_emb = valid_concept_emb.to(device) if valid_concept_emb is not None else None
        self.output_dir = Path(output_dir)
        self.config = config.to_dict() if config is not None else {}  # saved with the resume state
        self.progress, self.on_step = progress, on_step
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.epoch = 0          # epochs finished (steps and validation)
        self.step_in_epoch = 0  # steps done in the current epoch
        self.global_step = 0
        self.plan: tuple[torch.Tensor, torch.Tensor] | None = None
        self.best_auc: float | None = None
        self.best_epoch: int | None = None
        self.last_loss: float | None = None
        self.resumed_from: int | None = None
        self._stop = False

    # ---------------------------------------------------------------------- paths and state
    @property
    def weights_path(self) -> Path:
        return self.output_dir / WEIGHTS_NAME

    @property
    def best_path(self) -> Path:
        return self.output_dir / BEST_NAME

    @property
    def last_path(self) -> Path:
        return self.output_dir / LAST_NAME

    @property
    def resume_path(self) -> Path:
        return self.output_dir / RESUME_NAME

    @property
    def log_path(self) -> Path:
        return self.output_dir / LOG_NAME

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resumed run must share with the run it continues."""
        m = self.model
        return {"encoder": self.source.identity, "in_dim": m.in_dim, "num_heads": m.num_heads,
                "head_dim": m.head_dim, "out_dim": m.out_dim, "batch_size": self.options.batch_size,
                "lr": self.options.lr, "weight_decay": self.options.weight_decay, "seed": self.options.seed,
                "train_data": self.sampler.fingerprint(), "valid_data": triplets_fingerprint(self.valid)}

    def request_stop(self) -> None:
        """Ask the run to stop after the current step, saving the resume state (what Ctrl-C does)."""
        self._stop = True

    def resume_state(self) -> dict[str, Any]:
        return {
            "format": RESUME_FORMAT, "version": RESUME_VERSION,
            "model": plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "plan_order": None if self.plan is None else self.plan[0],
            "plan_choice": None if self.plan is None else self.plan[1],
            "best_auc": self.best_auc, "best_epoch": self.best_epoch, "last_loss": self.last_loss,
            "fingerprint": self.fingerprint(), "config": self.config,
        }

    def load_resume(self, path: str | Path) -> None:
        """Continue from a saved resume state; refuses one made with other data or settings."""
        path = Path(path)
        if not path.is_file():
            raise LatentGuardError(f"no resume state at {path} (train without --resume to start a new run)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LatentGuardError(f"{path} is not a resume state written by main.py (it is not a readable PyTorch "
                                   f"file: {type(exc).__name__}); pass --resume OUTPUT_DIR/resume.pt, or leave "
                                   "--resume out and choose another --output-dir for a new run") from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise LatentGuardError(f"{path}: not a latentguard resume state (expected a resume.pt written by main.py)")
        if state.get("version") != RESUME_VERSION:
            raise LatentGuardError(f"{path}: resume state version {state.get('version')} is not supported")
        saved, now = state["fingerprint"], self.fingerprint()
        # valid_data: a state written before it was recorded is not refused for lacking it
        keys = [k for k in now if saved.get(k) != now[k] and (k in saved or k != "valid_data")]
        data = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in keys if k in ("train_data", "valid_data")]
        if data:  # the weights would be continued on, and best.pth chosen over, data they did not see
            raise LatentGuardError(f"{path} was trained on other data: {self.dataset or 'the dataset'} is not the "
                                   f"file the run began on ({'; '.join(data)}); restore it to resume, or train "
                                   "into a new --output-dir (--force starts over here)")
        differ = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in keys]
        if differ:
            raise LatentGuardError(f"{path} was made with other settings ({'; '.join(differ)}); use the same "
                                   "settings to resume, another --output-dir for a new run, or --force to start "
                                   "over here (replacing that run's own files)")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        order, choice = state["plan_order"], state["plan_choice"]
        self.plan = None if order is None else (order, choice)
        self.best_auc, self.best_epoch = state["best_auc"], state["best_epoch"]
        self.last_loss = state["last_loss"]
        self.resumed_from = self.global_step

    def save(self) -> None:
        """Write last.pth (and, once the schedule is done, model_parameters.pth), then resume.pt, atomically."""
        weights = plain_state_dict(self.model)
        self._save(weights, self.last_path)
        if self.epoch >= self.options.epochs:
            self._save(weights, self.weights_path)  # the schedule is done: its final weights
        self._save(self.resume_state(), self.resume_path)
        if self.on_write is not None and self.log_path.is_file():
            self.on_write(self.log_path)  # the log as far as written: it only grows until the next trim

    def _save(self, obj: object, path: Path) -> None:
        atomic_torch_save(obj, path)
        if self.on_write is not None:
            self.on_write(path)

    # ---------------------------------------------------------------------------- the loop
    def _load_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        concepts, unsafe, safe = self.sampler.batch(self.plan, index, self.options.batch_size)
        return concepts, pinned(self.source.get(unsafe + safe), self.device)

    def _step(self, concepts: torch.Tensor, prompts: torch.Tensor) -> float:
        prompts = to_device(prompts, self.device)
        concept_emb = self.concept_emb[concepts.to(self.device)]
        self.optimizer.zero_grad(set_to_none=True)
        loss = contrastive_loss_from_logits(self.model.logit_matrix(prompts, concept_emb))
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise LatentGuardError(f"training diverged: loss is {value} at step {self.global_step + 1}; "
                                   "lower --lr or check the embeddings")
        return value

    def validate(self) -> float:
        return explicit_auc(self.model, self.source, self.valid, self.valid_concept_emb,
                            batch_size=self.options.eval_batch_size, device=self.device,
                            should_stop=lambda: self._stop)

    def run(self) -> TrainResult:
        """Train until ``options.epochs``; Ctrl-C saves the exact position and re-raises."""
        from tqdm import tqdm

        started = time.perf_counter()
        epochs, n_batches = self.options.epochs, self.sampler.num_batches(self.options.batch_size)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        refuse_links(self.log_path, what="training log")  # never trimmed, replaced or appended through a link
        self._trim_log()
        bar = tqdm(total=epochs * n_batches, initial=min(self.global_step, epochs * n_batches), unit="step",
                   desc="training", dynamic_ncols=True, disable=not self.progress, mininterval=0.5)
        self._rate = None
        try:
            with os.fdopen(open_regular(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "training log"), "a",
                           encoding="utf-8") as log, _deferred_interrupt(self, bar), \
                    _flush_denormals(self.device):
                if self.on_write is not None:
                    self.on_write(self.log_path)  # appended to, never replaced: recorded by identity once open
                while self.epoch < epochs:
                    self._train_epoch(log, bar, n_batches, epochs)
                    self._end_epoch(log, bar, epochs)
        finally:
            bar.close()
        if not self.weights_path.is_file() or not self.last_path.is_file():
            self.save()  # e.g. a finished run resumed with the same --epochs on a fresh directory copy
        best = self.best_path if self.options.keep_best and self.best_path.is_file() else None
        return TrainResult(self.output_dir, best, self.last_path, self.resume_path, self.log_path,
                           self.epoch, self.global_step, self.best_auc, self.best_epoch, self.last_loss,
                           self.resumed_from, time.perf_counter() - started, self.weights_path)

    def _train_epoch(self, log, bar, n_batches: int, epochs: int) -> None:
        """The remaining steps of the current epoch; after Ctrl-C, save and stop (raises KeyboardInterrupt)."""
        if self.plan is None:
            self.plan, self.step_in_epoch = self.sampler.plan_epoch(self.generator), 0
        tick = time.perf_counter()
        for concepts, prompts in prefetch(lambda i: self._load_batch(i), range(self.step_in_epoch, n_batches)):
            self.last_loss = self._step(concepts, prompts)
            self.step_in_epoch += 1
            self.global_step += 1
            tick = self._record_step(log, bar, epochs, tick)
            if self.on_step is not None:
                self.on_step(self)
            if self._stop:
                break
        if self._stop:
            self._stop_now(bar)

    def _record_step(self, log, bar, epochs: int, tick: float) -> float:
        """Log the step and update the progress bar; returns the time the step ended."""
        now = time.perf_counter()
        speed = 1.0 / max(now - tick, 1e-9)
        self._rate = speed if self._rate is None else 0.9 * self._rate + 0.1 * speed
        _log(log, {"step": self.global_step, "epoch": self.epoch + 1, "loss": self.last_loss,
                   "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": round(self._rate, 3)})
        bar.update(1)
        bar.set_postfix_str(f"epoch {self.epoch + 1}/{epochs} loss {self.last_loss:.4f}"
                            + (f" best AUC {self.best_auc:.4f}" if self.best_auc is not None else ""),
                            refresh=False)
        return now

    def _end_epoch(self, log, bar, epochs: int) -> None:
        """Validate when due, advance the epoch, save when due; after Ctrl-C, stop (raises KeyboardInterrupt)."""
        number = self.epoch + 1
        has_valid = bool(self.valid) and self.valid_concept_emb is not None
        validated = has_valid and (number % self.options.val_every == 0 or number == epochs)
        if validated:
            self._run_validation(log, bar, number, epochs)
        self.epoch, self.plan, self.step_in_epoch = number, None, 0
        if validated or number % self.options.save_every == 0 or number == epochs or self._stop:
            self.save()
        if self._stop:
            self._stop_now(bar, saved=True)

    def _run_validation(self, log, bar, number: int, epochs: int) -> None:
        tick = time.perf_counter()
        try:
            auc = self.validate()
        except StopRequested:
            self._stop_now(bar)
        seconds = time.perf_counter() - tick
        improved = not math.isnan(auc) and (self.best_auc is None or auc > self.best_auc)
        if improved:
            self.best_auc, self.best_epoch = auc, number
            if self.options.keep_best:  # monitoring only unless asked: released weights are the final ones
                self._save(plain_state_dict(self.model), self.best_path)
        _log(log, {"step": self.global_step, "epoch": number, "val_auc": auc, "best_auc": self.best_auc,
                   "best_epoch": self.best_epoch, "val_seconds": round(seconds, 3)})
        note = (" (new best, saved)" if self.options.keep_best else " (new best)") if improved else ""
        bar.write(f"epoch {number}/{epochs} step {self.global_step}: loss {self.last_loss:.4f}, "
                  f"val AUC {auc:.4f}{note}, best {self.best_auc:.4f} @ epoch {self.best_epoch}"
                  if self.best_auc is not None else
                  f"epoch {number}/{epochs} step {self.global_step}: loss {self.last_loss:.4f}, val AUC {auc}")

    def _stop_now(self, bar, saved: bool = False) -> None:
        if not saved:
            self.save()
        bar.write(f"stopped at epoch {self.epoch + 1}, step {self.global_step}; resume state saved to "
                  f"{self.resume_path}")
        raise KeyboardInterrupt

    def _trim_log(self) -> None:
        """On resume, drop log records past the resumed position (work that will be redone)."""
        if not self.log_path.is_file():
            return
        trim_log(self.log_path, lambda record: record.get("step", 0) <= self.global_step and not (
            "val_auc" in record and record.get("epoch", 0) > self.epoch))  # an unfinished epoch validates again


def _log(handle, record: Mapping[str, Any]) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()


@contextlib.contextmanager
def _flush_denormals(device: torch.device) -> Iterator[None]:
    """Flush denormal floats to zero on the CPU while training.

    Softmax tails and tiny Adam moments produce denormals, which make CPU kernels several times
    slower; values below 1e-38 change nothing that matters. Restored to PyTorch's default after.
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def _deferred_interrupt(trainer: Trainer, bar) -> Iterator[None]:
    """First Ctrl-C: finish the current step, save the resume state, stop. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ARG001
        if trainer._stop:
            raise KeyboardInterrupt
        trainer.request_stop()
        bar.write("Ctrl-C: stopping after this step and saving the resume state (press again to abort now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


# ------------------------------------------------------------------------------ entry point
def build_trainer(config: Config, copro, source: EmbeddingSource, *, output_dir: str | Path,
                  device: torch.device, resume: bool | str | Path | None = None, progress: bool = True,
                  on_step: Callable[[Trainer], None] | None = None) -> Trainer:
    """Set up a run from a loaded config, a CoPro and an embedding source.

    ``resume``: ``None`` continues from ``output_dir/resume.pt`` when it exists (re-running the same
    command after Ctrl-C picks up where it stopped), ``True`` requires it, a path names another
    resume state, ``False`` refuses to overwrite an existing run.
    """
    options = config.train
    output_dir = Path(output_dir)
    sampler = ConceptPairSampler(copro.split("ID_train_data"), copro.concepts("ID"))
    valid = copro.split("ID_valid_data") if copro.has_split("ID_valid_data") else []
    model = new_model(source.hidden_size, config.model, options.seed)
    concept_emb = concept_vectors(source, sampler.concepts)
    valid_concept_emb = concept_vectors(source, copro.concepts("ID")) if valid else None
    trainer = Trainer(model=model, sampler=sampler, source=source, concept_emb=concept_emb, valid=valid,
                      valid_concept_emb=valid_concept_emb, options=options, output_dir=output_dir, device=device,
                      config=config, progress=progress, on_step=on_step, dataset=getattr(copro, "path", None))
    existing = output_dir / RESUME_NAME
    if resume == "replace":  # --force: a new run over a previous run's own files
        return trainer
    if resume is None:
        resume = existing if existing.is_file() else False
    elif resume is True:
        resume = existing
    if resume is False:
        if existing.is_file():
            raise LatentGuardError(f"{output_dir} already holds a training run ({existing}); resume it or "
                                   "choose another --output-dir")
    else:
        trainer.load_resume(resume)
    return trainer


def is_training_run(directory: str | Path) -> bool:
    """Whether ``directory`` holds a run of main.py (its resume state), for runs made before run manifests."""
    path = Path(directory) / RESUME_NAME
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not a run of ours
        return False
    return isinstance(state, dict) and state.get("format") == RESUME_FORMAT


# What main.py may write in its --output-dir (bundles are folders of its own).
RUN_OUTPUTS = (WEIGHTS_NAME, BEST_NAME, LAST_NAME, RESUME_NAME, LOG_NAME, "config.yaml",
               "model_parameters.threshold.yaml", "best.threshold.yaml", "model_parameters_bundle", "best_bundle")


def training_texts(copro) -> list[str]:
    """Every text a training run reads: ID concepts, training and validation prompts."""
    texts = list(copro.concepts("ID"))
    for name in ("ID_train_data", "ID_valid_data"):
        if copro.has_split(name):
            for t in copro.split(name):
                texts += [t.unsafe_prompt, t.safe_prompt]
    return unique(texts)
