"""The project's own training recipe on open data (``recipe.name: open``; docs/recipe.md).

The paper's recipe (:mod:`latentguard.train.trainer`) stays the default and untouched. This one
trains the same Embedding Mapping Layer, in the method's own terms (a prompt is unsafe when it
matches a blacklist concept), with three losses per step:

* **contrastive** (the paper's loss, :func:`~latentguard.train.objective.contrastive_loss_from_logits`)
  on CoPro triplets: an unsafe prompt picks its own concept, a concept its own prompt over safe twins.
  This is what keeps the blacklist editable: a concept the guard never saw is still matched;
* **detection**: the best logit over the blacklist, minus a learnt offset, is a binary logit:
  unsafe prompts (CoPro, CoProV2) high, benign ones (their safe twins, COCO captions) low;
* **category**: a CoProV2 unsafe prompt matches its own category's concepts best (categories are
  the blacklist's groups), so a verdict names the right harm.

Embeddings come from the on-disk store (built first, resumably, by the run itself). The run
resumes from ``resume.pt`` (weights only, ``weights_only=True``) and ends by calibrating the
threshold on held-out captions and writing a guard bundle (``OUTPUT_DIR/bundle``).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LatentGuardError
from ..io import atomic_torch_save, atomic_write_text
from ..model import EmbeddingMappingLayer
from .objective import contrastive_loss_from_logits
from .recipe_data import RecipeExamples, build_examples
from .recipe_rundir import (
    clear_unfinished_bundle,
    complete_bundle,
    finished_record,
    input_difference,
    refuse_other_finished_run,
    refuse_other_settings,
    trained_settings,
)
from .runlog import trim_log

RESUME = "resume.pt"
LOG = "train_log.jsonl"
BUNDLE = "bundle"
SAVE_EVERY = 100
RESUME_KEYS = ("model", "offset", "optimizer", "rng", "step")
RECORD = "recipe_record.json"


@dataclass
class RecipeRun:
    output_dir: Path
    bundle: Path
    steps: int
    threshold: float
    valid_auc: float | None
    seconds: float


def _vocabulary(encoder) -> list[str]:
    """The whole words of the encoder's tokenizer (CLIP's end-of-word mark dropped), for harmless tails."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return []
    return sorted({t.removesuffix("</w>") for t in tokenizer.get_vocab() if not t.startswith("##")})


class _Pools:
    """Index sampling over the example pools, from one seeded generator (saved with the run)."""

    def __init__(self, examples: RecipeExamples, categories: list[str], seed: int) -> None:
        self.examples = examples
        self.rng = random.Random(seed)
        self.cat_index = {c: i for i, c in enumerate(categories)}
        by_concept: dict[str, list[int]] = {}
        for i, t in enumerate(examples.triplets):
            by_concept.setdefault(t.concept, []).append(i)
        self.by_concept = by_concept
        self.concepts = sorted(by_concept)

    def triplets(self, n: int) -> list[int]:
        concepts = self.rng.sample(self.concepts, min(n, len(self.concepts)))
        return [self.rng.choice(self.by_concept[c]) for c in concepts]

    def prompts(self, n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        ex = self.examples
        half = n // 2
        u = [self.rng.randrange(len(ex.unsafe)) for _ in range(half)]
        b = [self.rng.randrange(len(ex.benign)) for _ in range(n - half)]
        texts = [ex.unsafe[i] for i in u] + [ex.benign[i] for i in b]
        labels = torch.tensor([1.0] * len(u) + [0.0] * len(b))
        cats = torch.tensor([self.cat_index.get(ex.unsafe_category[i] or "", -1) for i in u] + [-1] * len(b))
        return texts, labels, cats


def _category_matrix(concepts: list[str], categories: dict[str, list[str]], names: list[str]) -> torch.Tensor:
    """``[K, C]`` boolean: concept c belongs to category k."""
    member = torch.zeros(len(names), len(concepts), dtype=torch.bool)
    where = {c: j for j, c in enumerate(concepts)}
    for k, name in enumerate(names):
        for c in categories.get(name, []):
            member[k, where[c]] = True
    return member


def recipe_losses(model: EmbeddingMappingLayer, offset: torch.Tensor, *, u_emb, s_emb, t_concepts, p_emb, labels,
                  cats, bl_vectors, member, weights) -> dict[str, torch.Tensor]:
    """The three losses of one step (see the module docstring); ``weights``: (contrastive, detection, category)."""
    out: dict[str, torch.Tensor] = {}
    if weights[0] > 0 and u_emb is not None:
        both = model.logit_matrix(torch.cat([u_emb, s_emb]), t_concepts)
        out["contrastive"] = contrastive_loss_from_logits(both)
    logits = model.logit_matrix(p_emb, bl_vectors)  # [P, C]
    best = logits.max(dim=1).values
    out["detection"] = F.binary_cross_entropy_with_logits(best - offset, labels)
    has = cats >= 0
    if weights[2] > 0 and bool(has.any()):
        masked = logits[has].unsqueeze(1).masked_fill(~member.unsqueeze(0), float("-inf"))  # [u, K, C]
        per_category = masked.max(dim=2).values
        out["category"] = F.cross_entropy(per_category, cats[has])
    total = sum(w * out[k] for k, w in zip(("contrastive", "detection", "category"), weights) if k in out)
    out["total"] = total
    return out


def train_open_recipe(cfg, output_dir: Path, device: torch.device, progress: bool = True,
                      claim: Callable[[], None] | None = None) -> RecipeRun:
    """Train (or resume) a guard with the open recipe of ``cfg.recipe``; write its bundle. ``claim`` (main.py's
    hold on ``output_dir``) is called once every input has been read and checked, before anything is written
    there: a run refused on its inputs leaves no run folder behind."""
    from ..data.blacklist import load_blacklist
    from ..encoders import load_encoder_from_config
    from ..store.locate import open_store_for

    started = time.perf_counter()
    output_dir = Path(output_dir)
    recipe = cfg.recipe
    if not recipe.concepts:
        raise LatentGuardError("recipe.concepts: the open recipe needs a grouped blacklist (a YAML of categories)")
    blacklist = load_blacklist(recipe.concepts)
    if not blacklist.categories:
        raise LatentGuardError(f"{recipe.concepts}: the open recipe needs a grouped blacklist (categories)")
    excluded = set(recipe.exclude_categories if isinstance(recipe.exclude_categories, list)
                   else [c for c in recipe.exclude_categories.split(",") if c])
    categories = {k: v for k, v in blacklist.categories.items() if k not in excluded}
    concepts = [c for c in blacklist.concepts if any(c in v for v in categories.values())]
    names = list(categories)
    encoder = load_encoder_from_config(cfg, device)
    examples = build_examples(recipe, blacklist.categories, cfg.train.seed, vocabulary=_vocabulary(encoder))
    print(f"data: {examples.summary()}", flush=True)
    unreadable = {t for t in examples.texts() if not encoder.readable(t)}
    if unreadable:  # a guard refuses such text at inference, so it teaches nothing (one emoji caption, say)
        examples = examples.without(unreadable)
        print(f"left out {len(unreadable)} texts the encoder cannot read (e.g. {sorted(unreadable)[0]!r})", flush=True)
    store = open_store_for(cfg.store_dir, encoder, dtype=cfg.store.dtype, create=True)
    inputs = training_inputs(recipe, examples, store)
    if claim is not None:
        claim()
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = trained_settings(cfg)
    # a finished run on other inputs or settings is refused before anything is trained (its bundle is kept)
    refuse_other_finished_run(output_dir / RECORD, inputs, settings)
    resume_file = output_dir / RESUME
    state = _resume_state(resume_file, inputs, device)  # refused on changed inputs before anything is encoded
    refuse_other_settings(resume_file, state, settings)  # and on changed settings, config.yaml there or not
    copro_concepts = sorted({t.concept for t in examples.triplets})
    needed = sorted(set(examples.texts()) | set(copro_concepts) | set(concepts), key=lambda t: (len(t), t))
    encoded = store.build(needed, encoder, batch_size=cfg.encoder.batch_size, progress=progress)
    print(f"store {store.path}: {encoded} texts encoded now, {len(store)} stored", flush=True)

    def rows(texts: list[str]) -> torch.Tensor:
        return store.get(texts).to(device)

    bl_vectors = rows(concepts)[:, 0]
    concept_vec = dict(zip(copro_concepts, rows(copro_concepts)[:, 0]))
    member = _category_matrix(concepts, categories, names).to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = EmbeddingMappingLayer(encoder.hidden_size, cfg.model.num_heads, cfg.model.head_dim,
                                      cfg.model.out_dim, mask_padding=cfg.model.mask_padding).to(device)
    offset = torch.nn.Parameter(torch.zeros((), device=device))
    optimizer = torch.optim.AdamW([*model.parameters(), offset], lr=cfg.train.lr,
                                  weight_decay=cfg.train.weight_decay)
    pools = _Pools(examples, names, cfg.train.seed)
    step, total_steps = 0, recipe.steps
    if state is not None:
        try:  # a state edited or written by another program: one line naming it, never a traceback
            model.load_state_dict(state["model"])
            offset.data.copy_(state["offset"])
            optimizer.load_state_dict(state["optimizer"])
            pools.rng.setstate(state["rng"])
            step = int(state["step"])
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise _not_a_resume_state(resume_file, f"its saved state does not fit this run: {type(exc).__name__} "
                                      f"{(str(exc).splitlines() or [''])[0][:80]}") from None
        if step < 0:
            raise _not_a_resume_state(resume_file, f"its step is {step}")
        print(f"resuming from {resume_file} at step {step}", flush=True)
        _truncate_log(output_dir / LOG, step)
    start = step
    weights = (recipe.contrastive_weight, recipe.detection_weight, recipe.category_weight)

    def warmup_cosine(s: int) -> float:  # 100 warm-up steps, then cosine to zero at the last step
        return min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine, last_epoch=step - 1 if step else -1)
    from tqdm import tqdm

    log = (output_dir / LOG).open("a", encoding="utf-8")
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not progress,
               dynamic_ncols=True)
    model.train()
    try:
        while step < total_steps:
            u_emb = s_emb = t_concepts = None
            if weights[0] > 0 and examples.triplets:
                picks = [examples.triplets[i] for i in pools.triplets(cfg.train.batch_size)]
                u_emb, s_emb = rows([t.unsafe for t in picks]), rows([t.safe for t in picks])
                t_concepts = torch.stack([concept_vec[t.concept] for t in picks])
            texts, labels, cats = pools.prompts(recipe.prompts_per_step)
            losses = recipe_losses(model, offset, u_emb=u_emb, s_emb=s_emb, t_concepts=t_concepts,
                                   p_emb=rows(texts), labels=labels.to(device), cats=cats.to(device),
                                   bl_vectors=bl_vectors, member=member, weights=weights)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
            record = {"step": step, **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
            log.write(json.dumps(record) + "\n")
            if step % SAVE_EVERY == 0 or step == total_steps:
                log.flush()
                atomic_torch_save({"model": model.state_dict(), "offset": offset.detach(),
                                   "optimizer": optimizer.state_dict(), "rng": pools.rng.getstate(), "step": step,
                                   "inputs": inputs, "settings": settings},
                                  resume_file)
                bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}")
    finally:
        bar.close()
        log.close()
    model.eval()
    return _finish(cfg, model, encoder, categories, concepts, examples, output_dir, (start, step), started,
                   {"inputs": inputs, "settings": settings})


def training_inputs(recipe, examples: RecipeExamples, store) -> dict[str, dict[str, str]]:
    """What the weights are trained on, by config key: each data file and the blacklist (path, SHA-256),
    and the encoder (its store, keyed by the encoder's identity). Saved in ``resume.pt`` and the run's
    record, so weights are never continued on, nor recorded as trained on, inputs they did not see."""
    from ..io import sha256_of

    inputs = {f"recipe.{key}": {"file": str(getattr(recipe, key)),
                                "sha256": examples.sources[str(getattr(recipe, key))]}
              for key in ("copro", "coprov2", "captions") if getattr(recipe, key)}
    inputs["recipe.concepts"] = {"file": str(recipe.concepts), "sha256": sha256_of(recipe.concepts)}
    inputs["encoder"] = {"store": store.path.name}
    return inputs


def _resume_state(path: Path, inputs: dict[str, dict[str, str]], device: torch.device) -> dict | None:
    """The state to continue from (``None``: a new run); refused, naming the file, when an input differs
    from the ones the saved weights were trained on (the record would name the new data for weights
    trained partly on the old)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # cut short (a full disk, a copy stopped), or another file under this name
        raise _not_a_resume_state(path, f"it is not a readable PyTorch file: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise _not_a_resume_state(path, f"it holds a {type(state).__name__}, not a dict of states")
    lacking = [key for key in RESUME_KEYS if key not in state]
    if lacking:
        raise _not_a_resume_state(path, f"it lacks {', '.join(lacking)}")
    saved = state.get("inputs")
    if saved is not None and not isinstance(saved, dict):
        raise _not_a_resume_state(path, "its inputs are not a mapping")
    if saved is None:  # written before resume states recorded their inputs
        print(f"note: {path} records no inputs (an older latentguard wrote it): the data, blacklist and encoder "
              "cannot be checked against it", flush=True)
        return state
    what = input_difference(saved, inputs)
    if what is not None:
        raise LatentGuardError(f"{path.parent} holds a run trained on other inputs: {what} since {path} was saved; "
                               "its weights are not continued on other data: restore the file to resume, or train "
                               "into a new --output-dir")
    return state


def _not_a_resume_state(path: Path, why: str) -> LatentGuardError:
    """The one refusal for a damaged ``resume.pt`` (worded as the paper recipe's): nothing is continued from it."""
    return LatentGuardError(f"{path} is not a resume state written by main.py ({why}); restore it from a copy, or "
                            f"delete it to train this run from step 0 (or choose another --output-dir)")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records after the step a run resumes from (they were logged, then lost with the run)."""
    trim_log(path, lambda record: record.get("step", 0) <= step)


def _finish(cfg, model, encoder, categories, concepts, examples, output_dir, steps, started, trained_on):
    """Calibrate the threshold on held-out captions and write the bundle (with its training record).
    ``steps``: (the step this session began at, the last step); ``trained_on``: the record's inputs and settings,
    which :func:`refuse_other_finished_run` has matched to any earlier record before training."""
    from ..decision.metrics import roc_auc
    from ..guard import LatentGuard

    (start, step), bundle, record_file = steps, output_dir / BUNDLE, output_dir / RECORD
    done = finished_record(record_file)
    if done is not None and start == step and done.get("steps") == step and complete_bundle(bundle):
        # the same finished run, run again with nothing trained now: its bundle (maybe edited) is kept
        print(f"finished earlier ({step} steps): {bundle} is kept as it is", flush=True)
        return RecipeRun(output_dir, bundle, step, float(done["threshold"]),
                         done.get("train_auc_vs_held_out_captions"), time.perf_counter() - started)
    if done is not None:  # the bundle is written anew: the old record must not outlive it (a crash mid-write)
        if start != step:  # resume.pt was deleted: these weights are not the ones the old bundle holds
            print(f"note: trained again from step {start}: {bundle} and {record_file.name} are written anew",
                  flush=True)
        record_file.unlink()
    clear_unfinished_bundle(bundle)  # a crash mid-write left part of one: this run's, written again now
    from ..guard.options import GuardOptions

    # calibrated reading prompts as the bundle will (its recorded options): the record names them, and a bundle
    # edited to read otherwise is refused
    guard = LatentGuard(model, encoder, concepts, threshold=0.0, categories=categories, device=model.tempr.device,
                        batch_size=128, **GuardOptions.recorded_in_config(cfg))
    calibration = guard.calibrate(examples.held_out_benign, target_fpr=cfg.recipe.target_fpr)
    held_unsafe = examples.unsafe[-min(2000, len(examples.unsafe)):]
    scores = guard.scores(held_unsafe + examples.held_out_benign)
    auc = roc_auc(np.r_[np.ones(len(held_unsafe)), np.zeros(len(examples.held_out_benign))], scores)
    record = {"recipe": cfg.recipe.__dict__ if hasattr(cfg.recipe, "__dict__") else dict(cfg.recipe),
              "data_sha256": examples.sources, **trained_on, "steps": step, "seed": cfg.train.seed,
              "threshold": calibration.threshold, "train_auc_vs_held_out_captions": auc}
    guard.save_pretrained(bundle, overwrite=True)  # config.json last: the bundle is complete before the record says so
    atomic_write_text(record_file, json.dumps(record, indent=2, default=str) + "\n")
    return RecipeRun(output_dir, bundle, step, float(calibration.threshold), float(auc),
                     time.perf_counter() - started)
