"""Training the Embedding Mapping Layer: the released contrastive loss and concept-pair sampling
(objective), the resumable run (trainer), and what it measures on the validation split (monitor)."""
from __future__ import annotations

from .monitor import explicit_auc, max_concept_scores, save_validation_threshold
from .objective import ConceptPairSampler, contrastive_loss, contrastive_loss_from_logits
from .trainer import Trainer, TrainResult, build_trainer, new_model, training_texts

__all__ = ["ConceptPairSampler", "TrainResult", "Trainer", "build_trainer", "contrastive_loss",
           "contrastive_loss_from_logits", "explicit_auc", "max_concept_scores", "new_model",
           "save_validation_threshold", "training_texts"]
