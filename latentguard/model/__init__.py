"""The Embedding Mapping Layer (concept as query, the prompt's 78 rows as keys and values, two
linear heads, logit = tempr * cos) and its checkpoints in the released format."""
from __future__ import annotations

from .checkpoint import (
                         expected_shapes,
                         infer_dims,
                         load_mapping_layer,
                         load_state_dict_file,
                         plain_state_dict,
                         released_checkpoint,
)
from .layer import EmbeddingMappingLayer
from .sanity import max_logit, validate_reachable, validate_weights

__all__ = ["EmbeddingMappingLayer", "validate_reachable", "validate_weights", "expected_shapes", "infer_dims",
           "load_mapping_layer", "load_state_dict_file", "max_logit", "plain_state_dict", "released_checkpoint"]
