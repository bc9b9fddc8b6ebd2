"""What training measures on the validation split: the explicit ID AUC of the current weights, and
the threshold of saved ones. Both score through :mod:`latentguard.scoring`, like evaluation and the guard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..decision.metrics import roc_auc
from ..io import unique
from ..model import EmbeddingMappingLayer
from ..scoring.logits import max_scores
from ..store.sources import EmbeddingSource


def max_concept_scores(model: EmbeddingMappingLayer, source: EmbeddingSource, texts: Sequence[str],
                       concept_emb: torch.Tensor, *, batch_size: int = 256, device: torch.device | str | None = None,
                       should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Score of each text = its max logit over the concepts (float32), through :mod:`latentguard.scoring`.

    Duplicate texts are scored once. Only one batch of embeddings is in memory at a time.
    """
    distinct = unique(list(texts))
    scores, _ = max_scores(model, source, distinct, concept_emb, batch_size=batch_size, device=device,
                           should_stop=should_stop)
    scores = scores.astype(np.float32)
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


def save_validation_threshold(trainer: "Trainer", checkpoint: Path | None = None) -> "CalibrationResult | None":  # noqa: F821
    """Pick the accuracy-maximising threshold of ``checkpoint`` on the validation split and save it.

    The released 9.0131 belongs to the released weights; a retrained checkpoint needs its own. The
    YAML lands beside the weights (default: ``model_parameters.pth``, the final ones), where
    ``inference.py --threshold auto`` (the default) and ``LatentGuard.from_pretrained`` find it, so a
    threshold always belongs to the weights next to it. Returns ``None`` without validation data.
    """
    from ..decision.threshold import calibrate, save_calibration
    from ..model import load_mapping_layer

    checkpoint = trainer.weights_path if checkpoint is None else Path(checkpoint)
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


def save_bundle(trainer: "Trainer", checkpoint: Path, calibration: "CalibrationResult | None",  # noqa: F821
                concepts: Sequence[str], cfg: "Config") -> Path:  # noqa: F821
    """Write the bundle of ``checkpoint`` beside it (``<stem>_bundle/``): the weights as safetensors, the training
    encoder's identity, the ID concepts and the validation threshold, so the run is shared or loaded as one folder
    (``inference.py --guard``). The run owns its directory, so a bundle it wrote before is replaced."""
    from ..guard.options import GuardOptions
    from ..hub.write import checkpoint_bundle

    model = trainer.model
    return checkpoint_bundle(checkpoint, identity=trainer.source.identity, concepts=concepts,
                             sizes={"in_dim": model.in_dim, "num_heads": model.num_heads, "head_dim": model.head_dim,
                                    "out_dim": model.out_dim},
                             attention_mask=cfg.encoder.attention_mask,
                             recorded=GuardOptions.recorded_in_config(cfg), calibration=calibration,
                             default_group=cfg.inference.category, overwrite=True)
