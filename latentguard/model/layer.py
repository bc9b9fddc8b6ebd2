"""The Embedding Mapping Layer: concept-as-query cross-attention over a prompt's 78 embedding rows.

Parameter names and shapes are those of the released checkpoint (the released ``model.py``'s module
names), so ``load_state_dict(torch.load("model_parameters.pth", weights_only=True), strict=True)``
works; reading and writing checkpoints is :mod:`latentguard.model.checkpoint`.

Two ways to score:
- :meth:`EmbeddingMappingLayer.forward` scores aligned (prompt_i, concept_i) pairs, as released;
- :meth:`EmbeddingMappingLayer.logit_matrix` scores every prompt against every concept, computing
  each prompt's keys/values and each concept's query once, in bounded-memory chunks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentGuardError

# Per-pair activations (attention output, v', weights) held at once by logit_matrix.
DEFAULT_CHUNK_ELEMENTS = 1 << 23
# With mask_padding: prompts scored per bucket of this many, sorted by length (each cut to its longest).
LENGTH_BUCKET = 32


class EmbeddingMappingLayer(nn.Module):
    """Maps a prompt embedding and a concept vector into a shared space; logit = tempr * cos."""

    def __init__(self, in_dim: int = 768, num_heads: int = 16, head_dim: int = 32, out_dim: int = 128,
                 mask_padding: bool = False) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.in_dim, self.num_heads, self.head_dim, self.out_dim = in_dim, num_heads, head_dim, out_dim
        # Released: every one of the 78 rows is attended, padding included. True (a departure, for
        # encoders that leave padding rows all zero: ``trim_padding``): all-zero rows are padding and
        # take no attention, so a prompt's logits do not depend on how far its batch was padded.
        self.mask_padding = bool(mask_padding)
        self.x1_to_key = nn.Linear(in_dim, inner)
        self.x1_to_value = nn.Linear(in_dim, inner)
        self.x2_to_query = nn.Linear(in_dim, inner)
        self.final_mlp = nn.Linear(inner, out_dim)
        self.mlp_query1 = nn.Linear(inner, out_dim)
        self.tempr = nn.Parameter(torch.tensor(1.0 / 0.07))

    # ----------------------------------------------------------------------------------- pieces
    def padding_mask(self, prompt_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rows, mask)``: with ``mask_padding``, the rows cut after the last non-padding row of the
        batch and a ``[P, L]`` boolean mask (True = attended); otherwise the rows as given and None."""
        if not self.mask_padding or prompt_emb.shape[1] == 0:
            return prompt_emb, None
        mask = prompt_emb.ne(0).any(dim=-1)  # [P, L]
        present = mask.any(dim=0).nonzero()
        length = int(present.max()) + 1 if present.numel() else 1
        mask = mask[:, :length].clone()
        mask[:, 0] = True  # an all-zero prompt still attends to something: never an empty softmax (NaN)
        return prompt_emb[:, :length], mask

    def prompt_keys_values(self, prompt_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[P, heads, L, head_dim]`` of each prompt, computed once per prompt."""
        p, length, _ = prompt_emb.shape
        # One GEMM for both projections: [P*L, in] x [in, 2*inner].
        weight = torch.cat([self.x1_to_key.weight, self.x1_to_value.weight])
        bias = torch.cat([self.x1_to_key.bias, self.x1_to_value.bias])
        both = F.linear(prompt_emb, weight, bias).view(p, length, 2, self.num_heads, self.head_dim)
        keys, values = both.unbind(2)  # views; backward stacks once instead of zero-filling twice
        return keys.transpose(1, 2), values.transpose(1, 2)

    def concept_queries(self, concept_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries ``[heads, C, head_dim]`` (pre-scaled by 1/sqrt(d)) and unit q' ``[C, out]``."""
        query = self.x2_to_query(concept_emb)
        q_out = F.normalize(self.mlp_query1(query), dim=-1)
        heads = query.view(-1, self.num_heads, self.head_dim).transpose(0, 1) / math.sqrt(self.head_dim)
        return heads, q_out

    def attend(self, keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor,
               return_attention: bool = False, mask: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit v' ``[P, C, out]`` for every (prompt, concept); optionally the weights ``[P, H, C, L]``.

        ``mask`` ``[P, L]`` (from :meth:`padding_mask`): False rows take no attention."""
        scores = torch.matmul(queries.unsqueeze(0), keys.transpose(-1, -2))  # [P, H, C, L]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        attended = torch.matmul(weights, values)  # [P, H, C, d]
        p, _, c, _ = attended.shape
        merged = attended.permute(0, 2, 1, 3).reshape(p, c, self.num_heads * self.head_dim)
        v_out = F.normalize(self.final_mlp(merged), dim=-1)
        return v_out, (weights if return_attention else None)

    # ---------------------------------------------------------------------------------- scoring
    def forward(self, prompt_emb: torch.Tensor, concept_emb: torch.Tensor) -> torch.Tensor:
        """Logits ``[N]`` of aligned pairs: prompt ``i`` against concept ``i`` (the released call)."""
        if prompt_emb.shape[0] != concept_emb.shape[0]:
            raise ValueError(f"forward scores aligned pairs: got {prompt_emb.shape[0]} prompts "
                             f"and {concept_emb.shape[0]} concepts (use logit_matrix for all pairs)")
        prompt_emb, mask = self.padding_mask(prompt_emb)
        keys, values = self.prompt_keys_values(prompt_emb)  # [N, H, L, d]
        query = self.x2_to_query(concept_emb)
        q_out = F.normalize(self.mlp_query1(query), dim=-1)
        q_heads = query.view(-1, self.num_heads, 1, self.head_dim) / math.sqrt(self.head_dim)  # [N, H, 1, d]
        scores = torch.matmul(q_heads, keys.transpose(-1, -2))  # [N, H, 1, L]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        merged = torch.matmul(weights, values).reshape(prompt_emb.shape[0], -1)  # [N, H*d]
        v_out = F.normalize(self.final_mlp(merged), dim=-1)
        return self.tempr * (v_out * q_out).sum(-1)

    def logit_matrix(self, prompt_emb: torch.Tensor, concept_emb: torch.Tensor | None,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, *,
                     queries: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``[P, C]`` of every prompt against every concept.

        Keys/values are computed once per prompt and queries once per concept. The attention runs
        through PyTorch's fused ``scaled_dot_product_attention`` (the [P, H, C, L] weights are never
        materialised) over chunks of prompts and concepts holding at most ``chunk_elements``
        per-pair activations, so memory stays bounded for any P x C. Differentiable.

        ``queries``: the output of :meth:`concept_queries` for a fixed blacklist, computed once by
        the caller (pass ``concept_emb=None``). Projecting 578 concepts costs more than scoring one
        prompt, so a guard checking prompts one at a time should not redo it per call.
        """
        if queries is None:
            if concept_emb is None:
                raise ValueError("logit_matrix needs concept_emb or precomputed queries")
            self.validate_inputs(prompt_emb, concept_emb)
            queries, q_out = self.concept_queries(concept_emb)  # [H, C, d], [C, out]
        else:
            self.validate_inputs(prompt_emb, None)
            queries, q_out = queries
        if self.mask_padding and prompt_emb.shape[0] > LENGTH_BUCKET:
            # Prompts of similar length together: each bucket is cut to its own longest prompt, so one
            # long prompt does not make the whole batch attend over its padding. Logits are unchanged.
            lengths = prompt_emb.ne(0).any(dim=-1).sum(dim=1)
            order = torch.argsort(lengths, stable=True)
            parts = [self.logit_matrix(prompt_emb[order[i : i + LENGTH_BUCKET]], None, chunk_elements,
                                       queries=(queries, q_out)) for i in range(0, len(order), LENGTH_BUCKET)]
            return torch.cat(parts)[torch.argsort(order)]
        prompt_emb, mask = self.padding_mask(prompt_emb)
        n_prompts, n_concepts = prompt_emb.shape[0], q_out.shape[0]
        if n_prompts == 0 or n_concepts == 0:  # nothing to score: an empty [P, C], still on the graph
            return self.tempr * prompt_emb.new_zeros(n_prompts, n_concepts)
        inner = self.num_heads * self.head_dim
        queries = queries.transpose(0, 1)  # [C, H, d]: attention output then lands as [P, C, H, d]
        per_pair = inner + self.out_dim + self.num_heads * prompt_emb.shape[1]
        concept_chunk = max(1, min(n_concepts, chunk_elements // per_pair))
        prompt_chunk = max(1, chunk_elements // (per_pair * concept_chunk))
        rows = []
        for p0 in range(0, n_prompts, prompt_chunk):
            keys, values = self.prompt_keys_values(prompt_emb[p0 : p0 + prompt_chunk])
            n = keys.shape[0]
            cols = []
            for c0 in range(0, n_concepts, concept_chunk):
                q = queries[c0 : c0 + concept_chunk]
                q = q.unsqueeze(0).expand(n, -1, -1, -1).transpose(1, 2)  # [n, H, c, d], a view
                keep = None if mask is None else mask[p0 : p0 + n, None, None, :]  # [n, 1, 1, L]
                attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=keep, scale=1.0)  # q pre-scaled
                merged = attended.transpose(1, 2).reshape(n, q.shape[2], inner)
                v_out = F.normalize(self.final_mlp(merged), dim=-1)
                cols.append((v_out * q_out[c0 : c0 + concept_chunk]).sum(-1))
            rows.append(torch.cat(cols, dim=1) if len(cols) > 1 else cols[0])
        logits = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
        return self.tempr * logits

    def validate_inputs(self, prompt_emb: torch.Tensor, concept_emb: torch.Tensor | None) -> None:
        """Refuse embeddings of the wrong shape with a clear error (public: callers that score with precomputed
        queries check their prompts here first)."""
        if prompt_emb.dim() != 3 or prompt_emb.shape[-1] != self.in_dim:
            raise LatentGuardError(f"prompt embeddings must be [P, L, {self.in_dim}], got {list(prompt_emb.shape)}")
        if concept_emb is not None and (concept_emb.dim() != 2 or concept_emb.shape[-1] != self.in_dim):
            raise LatentGuardError(f"concept embeddings must be [C, {self.in_dim}], got {list(concept_emb.shape)}")

    # ---------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401 - torch hook
        # Accept a one-element ``tempr`` saved as shape [1] as well as a 0-d scalar.
        key = prefix + "tempr"
        if key in state_dict and state_dict[key].numel() == 1:
            state_dict[key] = state_dict[key].reshape(())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
