"""Training the Embedding Mapping Layer with the released contrastive objective (REFERENCE §5).

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
import hashlib
import json
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .embeddings import EmbeddingSource, concept_vectors
from .errors import LatentGuardError
from .io import atomic_path, atomic_torch_save, unique
from .metrics import roc_auc
from .model import EmbeddingMappingLayer

WEIGHTS_NAME = "model_parameters.pth"  # final weights, as released
BEST_NAME = "best.pth"  # best validation AUC, opt-in (train.keep_best)
LAST_NAME = "last.pth"
RESUME_NAME = "resume.pt"
LOG_NAME = "train_log.jsonl"
RESUME_FORMAT = "latentguard-train-resume"
RESUME_VERSION = 1


# --------------------------------------------------------------------------------------- loss
def contrastive_loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The released loss from the stacked logit matrix ``[2n, n]`` = ``[U; S]`` (REFERENCE §5).

    Prompt side: row ``i`` of ``[U[i, :], m]`` with label ``i``, ``m[k] = max_j S[k, j]``.
    Concept side: row ``j`` of ``[U[:, j], S[:, j]]`` with label ``j``. Sum of both mean CEs.
    """
    n = logits.shape[1]
    if logits.shape[0] != 2 * n:
        raise ValueError(f"expected [2n, n] logits (unsafe rows then safe rows), got {list(logits.shape)}")
    unsafe, safe = logits[:n], logits[n:]
    labels = torch.arange(n, device=logits.device)
    safe_best = safe.max(dim=1).values  # each safe prompt's best-matching concept
    prompt_side = torch.cat([unsafe, safe_best.unsqueeze(0).expand(n, n)], dim=1)
    concept_side = logits.T  # row j: [U[:, j], S[:, j]]
    return F.cross_entropy(prompt_side, labels) + F.cross_entropy(concept_side, labels)


def contrastive_loss(model: EmbeddingMappingLayer, unsafe_emb: torch.Tensor, safe_emb: torch.Tensor,
                     concept_emb: torch.Tensor) -> torch.Tensor:
    """Released training loss for ``n`` aligned (unsafe_i, safe_i, concept_i) triplets.

    One ``logit_matrix`` call scores the ``2n`` prompts against the ``n`` concepts, so each prompt's
    keys/values are computed once instead of ``n`` times (the released code expands all pairs).
    """
    n = concept_emb.shape[0]
    if unsafe_emb.shape[0] != n or safe_emb.shape[0] != n:
        raise ValueError(f"need one unsafe and one safe prompt per concept: got {unsafe_emb.shape[0]} unsafe, "
                         f"{safe_emb.shape[0]} safe, {n} concepts")
    return contrastive_loss_from_logits(model.logit_matrix(torch.cat([unsafe_emb, safe_emb]), concept_emb))


# ----------------------------------------------------------------------------------- sampling
class ConceptPairSampler:
    """The released sampling: an epoch visits every concept once, in a shuffled order, with one
    (unsafe, safe) pair drawn at random among that concept's training pairs.

    An epoch's plan (order + pair choice) is drawn up front from a ``torch.Generator``, so it can
    be saved with the resume state and a run continues exactly where it stopped.
    """

    def __init__(self, triplets: Sequence, concepts: Sequence[str]) -> None:
        groups: dict[str, list[tuple[str, str]]] = {c: [] for c in concepts}
        for t in triplets:
            if t.concept in groups:
                groups[t.concept].append((t.unsafe_prompt, t.safe_prompt))
        self.concepts: list[str] = [c for c in groups if groups[c]]
        if not self.concepts:
            raise LatentGuardError("no training entry uses an ID concept: nothing to train on (check the dataset)")
        self.pairs: list[list[tuple[str, str]]] = [groups[c] for c in self.concepts]
        self._counts = torch.tensor([len(p) for p in self.pairs], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.concepts)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def plan_epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept order ``[C]``, chosen pair index per concept ``[C]``) for one epoch."""
        order = torch.randperm(len(self), generator=generator)
        draw = torch.rand(len(self), generator=generator, dtype=torch.float64)
        choice = torch.minimum((draw * self._counts).long(), self._counts.long() - 1)
        return order, choice

    def batch(self, plan: tuple[torch.Tensor, torch.Tensor], index: int,
              batch_size: int) -> tuple[torch.Tensor, list[str], list[str]]:
        """Batch ``index`` of an epoch plan: (concept indices, unsafe texts, safe texts)."""
        order, choice = plan
        concepts = order[index * batch_size : (index + 1) * batch_size]
        picked = [self.pairs[c][int(choice[c])] for c in concepts.tolist()]
        return concepts, [u for u, _ in picked], [s for _, s in picked]

    def fingerprint(self) -> str:
        """Hash of the training pairs: a resumed run must see the same data."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.concepts, self.pairs], ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()[:16]


def _prefetch(load: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
    """Yield ``load(job)`` for each job while the next one loads in a background thread.

    Reading a batch from the store (or encoding it) overlaps the model step; order is kept.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lg-prefetch") as pool:
        pending = None
        for job in jobs:
            future = pool.submit(load, job)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return batch.to(device, non_blocking=batch.is_pinned())
    return batch.to(device)


def _pinned(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked copy for an asynchronous host-to-GPU transfer (done in the loader thread)."""
    return batch.pin_memory() if device.type == "cuda" else batch


# --------------------------------------------------------------------------------- validation
class _StopRequested(Exception):
    """Raised inside validation when Ctrl-C asked the run to stop."""


@torch.no_grad()
def max_concept_scores(model: EmbeddingMappingLayer, source: EmbeddingSource, texts: Sequence[str],
                       concept_emb: torch.Tensor, *, batch_size: int = 256, device: torch.device | str | None = None,
                       should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Score of each text = its max logit over the concepts (REFERENCE §4), batch by batch.

    Duplicate texts are scored once. Only one batch of embeddings is in memory at a time.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    distinct = unique(list(texts))
    concept_emb = concept_emb.to(device)
    was_training = model.training
    model.eval()
    best: list[torch.Tensor] = []
    try:
        queries = model.concept_queries(concept_emb)  # once per validation pass, not once per batch
        batches = [distinct[i : i + batch_size] for i in range(0, len(distinct), batch_size)]
        for emb in _prefetch(lambda b: _pinned(source.get(b), device), batches):
            if should_stop is not None and should_stop():
                raise _StopRequested
            logits = model.logit_matrix(_to_device(emb, device), None, queries=queries)
            best.append(logits.max(dim=1).values.float().cpu())
    finally:
        model.train(was_training)
    scores = torch.cat(best).numpy() if best else np.empty(0, dtype=np.float32)
    where = {t: i for i, t in enumerate(distinct)}
    return scores[[where[t] for t in texts]] if len(texts) else scores


def explicit_auc(model: EmbeddingMappingLayer, source: EmbeddingSource, triplets: Sequence,
                 concept_emb: torch.Tensor, *, batch_size: int = 256, device: torch.device | str | None = None,
                 should_stop: Callable[[], bool] | None = None) -> float:
    """Explicit ROC AUC of a split: unsafe prompts (label 1) vs safe prompts (label 0), C_check given."""
    unsafe = [t.unsafe_prompt for t in triplets]
    safe = [t.safe_prompt for t in triplets]
    scores = max_concept_scores(model, source, unsafe + safe, concept_emb, batch_size=batch_size,
                                device=device, should_stop=should_stop)
    return roc_auc([1] * len(unsafe) + [0] * len(safe), scores)


def calibrate_best_checkpoint(trainer: "Trainer", checkpoint: Path | None = None) -> "CalibrationResult | None":  # noqa: F821
    """Pick the accuracy-maximising threshold of ``checkpoint`` on the validation split and save it.

    The released 9.0131 belongs to the released weights; a retrained checkpoint needs its own. The
    YAML lands beside the weights (default: ``model_parameters.pth``), where ``inference.py
    --threshold auto`` (the default) and ``LatentGuard.from_pretrained`` find it, so the threshold
    always belongs to the weights next to it. Returns ``None`` without validation data.
    """
    checkpoint = trainer.weights_path if checkpoint is None else Path(checkpoint)
    from .calibration import calibrate, save_calibration
    from .model import load_mapping_layer

    if not trainer.valid or trainer.valid_concept_emb is None or not checkpoint.is_file():
        return None
    model = load_mapping_layer(checkpoint, in_dim=trainer.model.in_dim,
                               num_heads=trainer.model.num_heads, device=trainer.device)
    unsafe = [t.unsafe_prompt for t in trainer.valid]
    safe = [t.safe_prompt for t in trainer.valid]
    scores = max_concept_scores(model, trainer.source, unsafe + safe, trainer.valid_concept_emb,
                                batch_size=trainer.options.eval_batch_size, device=trainer.device)
    result = calibrate(scores[len(unsafe):], scores[: len(unsafe)])
    save_calibration(result, checkpoint, encoder_identity=trainer.source.identity)
    return result


# ----------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TrainOptions:
    """The ``train:`` section of the config, checked."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    val_every: int
    save_every: int
    eval_batch_size: int
    keep_best: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config") -> "TrainOptions":
        """Check the keys :func:`latentguard.config.validate` leaves to training; ``source`` names the file."""
        train = config["train"]
        value = train["seed"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LatentGuardError(f"{source}: 'train.seed' must be an integer >= 0, got {value!r}")
        for key in ("save_every", "eval_batch_size"):
            value = train[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LatentGuardError(f"{source}: 'train.{key}' must be a positive integer, got {value!r}")
        if not isinstance(train.get("keep_best", False), bool):
            raise LatentGuardError(f"{source}: 'train.keep_best' must be true or false, got {train['keep_best']!r}")
        if not isinstance(train["no_cache"], bool):
            raise LatentGuardError(f"{source}: 'train.no_cache' must be true or false, got {train['no_cache']!r}")
        if not math.isfinite(float(train["lr"])):
            raise LatentGuardError(f"{source}: 'train.lr' must be a finite number, got {train['lr']!r}")
        return cls(epochs=int(train["epochs"]), batch_size=int(train["batch_size"]), lr=float(train["lr"]),
                   weight_decay=float(train["weight_decay"]), seed=int(train["seed"]),
                   val_every=int(train["val_every"]), save_every=int(train["save_every"]),
                   eval_batch_size=int(train["eval_batch_size"]), keep_best=bool(train.get("keep_best", False)))


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


def new_model(in_dim: int, model_cfg: Mapping[str, int], seed: int) -> EmbeddingMappingLayer:
    """A freshly initialised mapping layer; the seed fixes the weights without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EmbeddingMappingLayer(in_dim, int(model_cfg["num_heads"]), int(model_cfg["head_dim"]),
                                     int(model_cfg["out_dim"]))


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the state dict: the released ``model_parameters.pth`` format."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """One training run: the model, its optimiser, the sampler state and the checkpoints."""

    def __init__(self, *, model: EmbeddingMappingLayer, sampler: ConceptPairSampler, source: EmbeddingSource,
                 concept_emb: torch.Tensor, valid: Sequence, valid_concept_emb: torch.Tensor | None,
                 options: TrainOptions, output_dir: str | Path, device: torch.device,
                 config: Mapping[str, Any] | None = None, progress: bool = True,
                 on_step: Callable[["Trainer"], None] | None = None) -> None:
        self.device = device
        self.model = model.to(device).train()
        self.sampler, self.source, self.options = sampler, source, options
        self.concept_emb = concept_emb.to(device)  # [C_train, in], row i = sampler.concepts[i]
        self.valid = list(valid)
        self.valid_concept_emb = valid_concept_emb.to(device) if valid_concept_emb is not None else None
        self.output_dir = Path(output_dir)
        self.config = dict(config or {})
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
                "train_data": self.sampler.fingerprint()}

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
            raise LatentGuardError(f"{path}: cannot read resume state ({type(exc).__name__}); "
                                   "delete it to start over, or use another --output-dir") from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise LatentGuardError(f"{path}: not a latentguard resume state (expected a resume.pt written by main.py)")
        if state.get("version") != RESUME_VERSION:
            raise LatentGuardError(f"{path}: resume state version {state.get('version')} is not supported")
        saved, now = state["fingerprint"], self.fingerprint()
        differ = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
        if differ:
            raise LatentGuardError(f"{path} was made with other settings ({'; '.join(differ)}); use the same "
                                   "settings to resume, or another --output-dir for a new run")
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
        """Write last.pth then resume.pt (both atomically)."""
        weights = plain_state_dict(self.model)
        atomic_torch_save(weights, self.last_path)
        if self.epoch >= self.options.epochs:
            atomic_torch_save(weights, self.weights_path)  # the schedule is done: its final weights
        atomic_torch_save(self.resume_state(), self.resume_path)

    # ---------------------------------------------------------------------------- the loop
    def _load_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        concepts, unsafe, safe = self.sampler.batch(self.plan, index, self.options.batch_size)
        return concepts, _pinned(self.source.get(unsafe + safe), self.device)

    def _step(self, concepts: torch.Tensor, prompts: torch.Tensor) -> float:
        prompts = _to_device(prompts, self.device)
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
        has_valid = bool(self.valid) and self.valid_concept_emb is not None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._trim_log()
        bar = tqdm(total=epochs * n_batches, initial=min(self.global_step, epochs * n_batches), unit="step",
                   desc="training", dynamic_ncols=True, disable=not self.progress, mininterval=0.5)
        rate: float | None = None
        try:
            with open(self.log_path, "a", encoding="utf-8") as log, _deferred_interrupt(self, bar), \
                    _flush_denormals(self.device):
                while self.epoch < epochs:
                    if self.plan is None:
                        self.plan, self.step_in_epoch = self.sampler.plan_epoch(self.generator), 0
                    tick = time.perf_counter()
                    for concepts, prompts in _prefetch(lambda i: self._load_batch(i),
                                                       range(self.step_in_epoch, n_batches)):
                        self.last_loss = self._step(concepts, prompts)
                        self.step_in_epoch += 1
                        self.global_step += 1
                        now = time.perf_counter()
                        rate = 1.0 / max(now - tick, 1e-9) if rate is None else 0.9 * rate + 0.1 / max(now - tick, 1e-9)
                        tick = now
                        _log(log, {"step": self.global_step, "epoch": self.epoch + 1, "loss": self.last_loss,
                                   "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": round(rate, 3)})
                        bar.update(1)
                        bar.set_postfix_str(f"epoch {self.epoch + 1}/{epochs} loss {self.last_loss:.4f}"
                                            + (f" best AUC {self.best_auc:.4f}" if self.best_auc is not None else ""),
                                            refresh=False)
                        if self.on_step is not None:
                            self.on_step(self)
                        if self._stop:
                            break
                    if self._stop:
                        self._stop_now(bar)
                    number = self.epoch + 1
                    validated = False
                    if has_valid and (number % self.options.val_every == 0 or number == epochs):
                        self._run_validation(log, bar, number, epochs)
                        validated = True
                    self.epoch, self.plan, self.step_in_epoch = number, None, 0
                    if validated or number % self.options.save_every == 0 or number == epochs or self._stop:
                        self.save()
                    if self._stop:
                        self._stop_now(bar, saved=True)
        finally:
            bar.close()
        if not self.weights_path.is_file() or not self.last_path.is_file():
            self.save()  # e.g. a finished run resumed with the same --epochs on a fresh directory copy
        best = self.best_path if self.options.keep_best and self.best_path.is_file() else None
        return TrainResult(self.output_dir, best, self.last_path, self.resume_path, self.log_path,
                           self.epoch, self.global_step, self.best_auc, self.best_epoch, self.last_loss,
                           self.resumed_from, time.perf_counter() - started, self.weights_path)

    def _run_validation(self, log, bar, number: int, epochs: int) -> None:
        tick = time.perf_counter()
        try:
            auc = self.validate()
        except _StopRequested:
            self._stop_now(bar)
        seconds = time.perf_counter() - tick
        improved = not math.isnan(auc) and (self.best_auc is None or auc > self.best_auc)
        if improved:
            self.best_auc, self.best_epoch = auc, number
            if self.options.keep_best:  # monitoring only unless asked: released weights are the final ones
                atomic_torch_save(plain_state_dict(self.model), self.best_path)
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
        keep = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line from a hard kill
            if record.get("step", 0) > self.global_step:
                continue
            if "val_auc" in record and record.get("epoch", 0) > self.epoch:
                continue  # validation of an unfinished epoch will run again
            keep.append(line)
        with atomic_path(self.log_path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


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
def build_trainer(config: Mapping[str, Any], copro, source: EmbeddingSource, *, output_dir: str | Path,
                  device: torch.device, resume: bool | str | Path | None = None, progress: bool = True,
                  on_step: Callable[[Trainer], None] | None = None) -> Trainer:
    """Set up a run from a loaded config, a CoPro and an embedding source.

    ``resume``: ``None`` continues from ``output_dir/resume.pt`` when it exists (re-running the same
    command after Ctrl-C picks up where it stopped), ``True`` requires it, a path names another
    resume state, ``False`` refuses to overwrite an existing run.
    """
    options = TrainOptions.from_config(config)
    output_dir = Path(output_dir)
    sampler = ConceptPairSampler(copro.split("ID_train_data"), copro.concepts("ID"))
    valid = copro.split("ID_valid_data") if copro.has_split("ID_valid_data") else []
    model = new_model(source.hidden_size, config["model"], options.seed)
    concept_emb = concept_vectors(source, sampler.concepts)
    valid_concept_emb = concept_vectors(source, copro.concepts("ID")) if valid else None
    trainer = Trainer(model=model, sampler=sampler, source=source, concept_emb=concept_emb, valid=valid,
                      valid_concept_emb=valid_concept_emb, options=options, output_dir=output_dir, device=device,
                      config=config, progress=progress, on_step=on_step)
    existing = output_dir / RESUME_NAME
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


def training_texts(copro) -> list[str]:
    """Every text a training run reads: ID concepts, training and validation prompts."""
    texts = list(copro.concepts("ID"))
    for name in ("ID_train_data", "ID_valid_data"):
        if copro.has_split(name):
            for t in copro.split(name):
                texts += [t.unsafe_prompt, t.safe_prompt]
    return unique(texts)
