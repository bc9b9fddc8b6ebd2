"""The paper's Table 1 baselines: Text Blacklist, CLIPScore and BERTScore.

They are scored on exactly the prompts, settings and thresholds Latent Guard is scored on, so the
comparison in ``results.md`` is like for like:

* Text Blacklist flags a prompt when a blacklisted concept occurs in it, ignoring case: a plain
  substring match, the rule that reproduces the paper's Table 1(a) (.805 ID / .895 OOD on the
  released explicit test prompts). ``match="word"`` asks for whole words instead (.857 / .878 there).
  It gives a decision, not a score, so it has no AUC (the paper's "-").
* CLIPScore is the best cosine between the prompt's pooled CLIP embedding (row 0 of the stored
  embedding) and each concept's; it reuses the embeddings Latent Guard reads, so it costs no encoding.
* BERTScore is the idf-free BERTScore F1 (greedy matching of contextual token embeddings) between
  the prompt and each concept, best over concepts, with a BERT-family model given by name or path.

Each rule is wrapped for evaluation by one class of :mod:`latentguard.eval.methods`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import BLACKLIST_MATCHES
from ..errors import LatentGuardError


# ------------------------------------------------------------------------------ Text Blacklist
class TextBlacklist:
    """Case-insensitive concept matcher: one compiled pattern for the whole list.

    ``match="substring"`` (default, the paper's rule) flags any occurrence, e.g. "knife" in
    "penknife". ``match="word"``: no letter, digit or underscore may touch the match on either
    side, which also works for concepts that start or end with punctuation (where ``\\b`` would not).
    """

    def __init__(self, concepts: Sequence[str], match: str = "substring") -> None:
        if match not in BLACKLIST_MATCHES:
                    raise LatentGuardError(f"unknown blacklist match '{match}' (use {' or '.join(BLACKLIST_MATCHES)})")
        self.rule = match
        self.concepts = list(concepts)
        self._index: dict[str, int] = {}
        for i, concept in enumerate(self.concepts):
            self._index.setdefault(concept.lower(), i)
        # Longest first, so "blood bath" wins over "blood" when both match at one place.
        alternatives = sorted(self._index, key=len, reverse=True)
        body = "|".join(re.escape(c) for c in alternatives) or r"(?!x)x"
        bounded = rf"(?<!\w)(?:{body})(?!\w)" if match == "word" else body
        self._pattern = re.compile(bounded, re.IGNORECASE)

    def match(self, text: str) -> int:
        """Index of the first concept found in ``text``, or -1."""
        found = self._pattern.search(text)
        if found is None:
            return -1
        key = found.group(0).lower()
        if key in self._index:
            return self._index[key]
        for i, concept in enumerate(self.concepts):  # case folding changed the length: rare
            if re.fullmatch(re.escape(concept), found.group(0), re.IGNORECASE):
                return i
        return -1

    def scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(1.0 flagged / 0.0 not, matched concept index or -1) for every text."""
        best = np.fromiter((self.match(t) for t in texts), dtype=np.int64, count=len(texts))
        return (best >= 0).astype(np.float64), best


# Blacklist decisions are 0/1; any threshold in (0, 1] reproduces "flag when a concept matches".
BLACKLIST_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------- CLIPScore
def clip_score_matrix(pooled_prompts: torch.Tensor, concept_vectors: torch.Tensor) -> torch.Tensor:
    """Cosine ``[P, C]`` between pooled prompt embeddings ``[P, H]`` and concept vectors ``[C, H]``."""
    return F.normalize(pooled_prompts.float(), dim=-1) @ F.normalize(concept_vectors.float(), dim=-1).T


# ----------------------------------------------------------------------------------- BERTScore
class BERTScorer:
    """idf-free BERTScore F1 with any Hugging Face encoder (BERT, RoBERTa, DeBERTa, ...).

    Special tokens ([CLS], [SEP], <s>, </s>) are left out of the matching, as in the original
    BERTScore. ``layer=None`` uses the last hidden layer; an int picks ``hidden_states[layer]``.
    """

    def __init__(self, model, tokenizer, *, device: str | torch.device = "cpu", layer: int | None = None,
                 batch_size: int = 64, name: str = "bert") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.layer = layer
        self.batch_size = batch_size
        self.name = name
        limit = getattr(tokenizer, "model_max_length", 512) or 512
        self.max_length = int(min(limit, 512))

    @classmethod
    def load(cls, name_or_path: str, *, device: str | torch.device = "cpu", layer: int | None = None,
             batch_size: int = 64) -> "BERTScorer":
        """Load model and tokenizer with ``transformers`` Auto classes (raises what they raise)."""
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModel.from_pretrained(name_or_path)
        return cls(model, tokenizer, device=device, layer=layer, batch_size=batch_size, name=str(name_or_path))

    @torch.inference_mode()
    def token_embeddings(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit contextual token vectors ``[n, L, H]`` and the mask of real (non-special) tokens ``[n, L]``."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt", return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask").bool()
        mask = batch["attention_mask"].bool() & ~special
        inputs = {k: v.to(self.device) for k, v in batch.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.layer is None:
            hidden = self.model(**inputs).last_hidden_state
        else:
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]
        return F.normalize(hidden.float(), dim=-1), mask.to(self.device)

    @staticmethod
    def f1_matrix(a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor,
                  max_elements: int = 1 << 24) -> torch.Tensor:
        """BERTScore F1 ``[A, B]`` of every text of ``a`` against every text of ``b`` (unit token vectors).

        Precision averages, over a's tokens, the best cosine to b's tokens; recall the converse.
        Texts with no real token score 0. Chunked over ``b`` to bound memory.
        """
        n_a, len_a, _ = a.shape
        n_b, len_b, _ = b.shape
        a_count = a_mask.sum(-1).clamp(min=1).float()  # [A]
        b_count = b_mask.sum(-1).clamp(min=1).float()  # [B]
        step = max(1, max_elements // max(1, n_a * len_a * len_b))
        out = []
        for s in range(0, n_b, step):
            bb, bm = b[s : s + step], b_mask[s : s + step]
            sim = torch.einsum("pid,cjd->pcij", a, bb)  # [A, c, La, Lb]
            neg = torch.finfo(sim.dtype).min
            best_for_a = sim.masked_fill(~bm[None, :, None, :], neg).amax(-1)  # [A, c, La]
            best_for_b = sim.masked_fill(~a_mask[:, None, :, None], neg).amax(-2)  # [A, c, Lb]
            precision = (best_for_a * a_mask[:, None, :]).sum(-1) / a_count[:, None]
            recall = (best_for_b * bm[None, :, :]).sum(-1) / b_count[None, s : s + step]
            valid = a_mask.any(-1)[:, None] & bm.any(-1)[None, :]
            f1 = torch.where((precision + recall) > 0, 2 * precision * recall / (precision + recall),
                             torch.zeros_like(precision))
            out.append(torch.where(valid, f1, torch.zeros_like(f1)))
        return torch.cat(out, dim=1)

    def pair_f1(self, candidate: str, reference: str) -> float:
        """BERTScore F1 of one pair of strings."""
        a, am = self.token_embeddings([candidate])
        b, bm = self.token_embeddings([reference])
        return float(self.f1_matrix(a, am, b, bm)[0, 0])

    def scores(self, texts: Sequence[str], concepts: Sequence[str],
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Best F1 over ``concepts`` and its concept index, for every text (batched)."""
        from tqdm import tqdm

        c_emb, c_mask = self.token_embeddings(concepts)
        score = np.empty(len(texts), dtype=np.float64)
        best = np.empty(len(texts), dtype=np.int64)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="BERTScore", unit="batch", disable=not progress, leave=False):
            chunk = texts[start : start + self.batch_size]
            emb, mask = self.token_embeddings(chunk)
            values, index = self.f1_matrix(emb, mask, c_emb, c_mask).max(dim=1)
            score[start : start + len(chunk)] = values.cpu().numpy()
            best[start : start + len(chunk)] = index.cpu().numpy()
        return score, best


def load_bert_scorer(name_or_path: str | None, *, device: str | torch.device = "cpu",
                     batch_size: int = 64, layer: int | None = None) -> tuple[BERTScorer | None, str]:
    """A scorer, or ``None`` and the one-line reason why BERTScore is skipped (never raises)."""
    if not name_or_path:
        return None, "BERTScore skipped: no BERT model given (pass --bert-model NAME_OR_DIR or set eval.bert_model)"
    text = str(name_or_path)
    if text.startswith(("/", ".", "~")) and not Path(text).expanduser().exists():
        return None, f"BERTScore skipped: BERT model directory '{text}' does not exist"
    try:
        return BERTScorer.load(str(name_or_path), device=device, layer=layer, batch_size=batch_size), ""
    except Exception as exc:  # any loading failure means "skip", by design
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"BERTScore skipped: cannot load BERT model '{name_or_path}' ({first[:200]})"
