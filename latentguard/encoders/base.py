"""The encoder interface: the 78-row layout, batching and long-prompt windows shared by every family.

Layout (as the released ``inference.py`` encodes): prompts are padded/truncated to 77 tokens and
encoded without an attention mask; the stored embedding is ``[pooled state, state_0 .. state_76]``
-> ``[78, hidden]``, where the pooled state is the one at the first end-of-text token
(``input_ids.argmax(-1)`` for CLIP). :data:`latentguard.constants.LAYOUT_VERSION` names this layout: stores and the
store hints in :mod:`latentguard.store.locate` are keyed on it, so change it whenever the rows an
encoder produces for a text change.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator, Sequence

import torch

from ..constants import (  # noqa: F401
    CONTEXT_LENGTH,
    DEFAULT_ENCODER,
    DEFAULT_WINDOW_STRIDE,
    EMBEDDING_ROWS,
    ENCODER_TYPES,
    LAYOUT_VERSION,
)
from ..errors import LatentGuardError, UnreadableTextError

# Texts whose ids, beside the vocabulary, show how a tokenizer reads: case, accents, digits, symbols, contractions,
# markup (what a normaliser or a pre-tokenizer changes); only characters every family's vocabulary holds.
_PROBE = ("A photo of a Cat, a knife & blood: 123 naïve CAFÉ don't <b>x</b>", "the quick brown fox jumps over")


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap hash of a model's weights (names, shapes and a sample of values of every tensor).

    Stores and caches are keyed by it, so embeddings from two different encoders never mix, even
    when both carry the same name (e.g. two local fine-tunes saved in the same directory). A key,
    not a seal: it reads the first and last 512 values of each tensor (the pipeline wrapper seals
    a shared encoder's full content, :class:`latentguard.pipeline.parts.WeightsSeal`); encoders take
    it before casting to their dtype, so a precision is not another encoder.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:512], flat[-512:]]).float().cpu().numpy().tobytes()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample)
    return digest.hexdigest()[:16]

def window_starts(n_tokens: int, span: int, stride: int) -> list[int]:
    """Start offsets of overlapping windows of ``span`` tokens over ``n_tokens`` content tokens.

    One window when the content fits; otherwise windows every ``stride`` tokens plus one aligned
    with the end, so the last token is always covered and no gap exceeds ``stride``.
    """
    if n_tokens <= span:
        return [0]
    return list(range(0, n_tokens - span, stride)) + [n_tokens - span]


# The control tokens of the generators' CLIP tokenizers (Hugging Face's and open_clip's spellings): typed in a
# prompt, the generator reads them as its own start or end, whatever the guard's tokenizer reads.
GENERATOR_CONTROL_LITERALS = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")


class TextEncoder:
    """Base class: batching, no-grad eval mode, the 78-row layout and long-prompt windows.

    A family implements :meth:`_token_ids` (texts -> padded ids and attention mask),
    :meth:`_forward_ids` (ids -> token states and the pooled token's index), and, for windows,
    :meth:`_content_ids` (a text's tokens without special tokens), :meth:`_special_ids`
    (prefix, suffix, padding id) and :meth:`_ids_to_tokens`.
    """

    family = "base"
    prefix: str | None = None  # a name starting with it is this family's whatever its files say ("openclip:")
    reads = "English text"     # what the model card says the encoder reads
    records_max_length = False  # a bundle records the context length (an option of the family's loader)
    context_length = CONTEXT_LENGTH
    name: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype

    # ------------------------------------------------------------------- family registration
    @classmethod
    def claims(cls, model_type: str | None) -> bool:
        """Whether a Hugging Face model of ``model_type`` (``None``: no readable config) is this family's;
        :func:`latentguard.encoders.detect_family` asks the registered families in order."""
        return False

    @classmethod
    def open(cls, name: str, *, device, dtype, attention_mask: bool, max_length: int,
             forced: bool) -> "TextEncoder":
        """The encoder ``name`` with :func:`latentguard.encoders.load_encoder`'s options (``forced``: the
        family was named by the user, not detected); a family refuses options it does not have."""
        raise NotImplementedError

    @classmethod
    def loadable_name(cls, name: str) -> str:
        """``name`` as :func:`~latentguard.encoders.load_encoder` reads it back (with the family's prefix)."""
        return name if not cls.prefix or name.startswith(cls.prefix) else cls.prefix + name

    # ------------------------------------------------------------------------- family hooks
    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _content_ids(self, text: str) -> list[int]:
        raise LatentGuardError(f"{self.family} encoder '{self.name}' cannot split long prompts into windows")

    def _alone_ids(self, text: str) -> list[int]:
        """:meth:`_content_ids` from any thread, while the model thread encodes (the server reads and costs
        requests on other threads: :meth:`token_count`, :meth:`refuse_unreadable`)."""
        return self._content_ids(text)

    def _special_ids(self) -> tuple[list[int], list[int], int]:
        raise LatentGuardError(f"{self.family} encoder '{self.name}' cannot split long prompts into windows")

    def _ids_to_tokens(self, ids: list[int]) -> list[str]:
        raise NotImplementedError

    def _fingerprint(self) -> str:
        raise NotImplementedError

    def _hidden_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``[b, L, hidden]`` and the pooled token index ``[b]`` of each text."""
        self._refuse_control_literals(texts)
        input_ids, attention_mask = self._token_ids(texts)
        return self._forward_ids(input_ids, attention_mask)

    # ------------------------------------------------------------------------------ identity
    @property
    def layout_tag(self) -> str:
        """Options that change the embedding (they are part of :attr:`identity`)."""
        return ""

    @property
    def identity(self) -> str:
        """A stable string naming this exact encoder: family, name, width, weights, tokenizer and options."""
        if not hasattr(self, "_identity"):
            precision = "" if self.dtype == torch.float32 else f":{str(self.dtype).replace('torch.', '')}"
            tokenizer = f":tok{digest}" if (digest := self.tokenizer_digest()) else ""
            self._identity = (f"{self.family}:{self.name}:h{self.hidden_size}:{self._fingerprint()}"
                              f"{tokenizer}{self.layout_tag}{precision}")
        return self._identity

    def tokenizer_digest(self) -> str:
        """8 hex digits of the tokenizer: its vocabulary (token -> id, and a BPE's merges where it exposes them) and
        its ids for :data:`_PROBE`. The same weights read through another tokenizer embed other texts: a folder
        with MiniLM's weights and the ids of "knife" and "cat" swapped had shared the identity, so its concept
        vectors filled the cache every `mini` run reads (a forty-first hostile pass)."""
        tokenizer = getattr(self, "tokenizer", None)
        vocab = getattr(tokenizer, "get_vocab", None)
        vocab = vocab() if callable(vocab) else getattr(tokenizer, "encoder", None)
        merges = getattr(tokenizer, "bpe_ranks", None)  # open_clip's BPE; a fast tokenizer's shows in the probe
        try:
            ids = self._probe_ids(list(_PROBE))
        except NotImplementedError:  # an encoder that reads text its own way (a subclass with only _hidden_states)
            ids = None
        if not vocab and not merges and ids is None:
            return ""  # nothing to name its tokenizer by: the identity holds the weights alone, as before
        digest = hashlib.sha256(json.dumps([sorted((str(k), int(v)) for k, v in (vocab or {}).items()),
                                            sorted((" ".join(k), int(v)) for k, v in (merges or {}).items()),
                                            ids]).encode())
        return digest.hexdigest()[:8]

    def _probe_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids without padding (a layout option, not the tokenizer's): :meth:`tokenizer_digest`."""
        ids, mask = (t.tolist() for t in self._token_ids(texts))
        return [[i for i, keep in zip(row, keep_row) if keep] for row, keep_row in zip(ids, mask)]

    def token_strings(self, text: str) -> list[str]:
        """The 77 token strings the model sees for ``text`` (for explanations)."""
        input_ids, _ = self._token_ids([text])
        return self._ids_to_tokens(input_ids[0].tolist())

    # ------------------------------------------------------------------------------ encoding
    def _layout(self, hidden: torch.Tensor, pooled_index: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, pooled_index].unsqueeze(1)
        return torch.cat([pooled, hidden], dim=1).float().cpu()

    def iter_encode(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, [b, 78, hidden] float32 CPU)`` batch by batch: streams, never holds all."""
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        texts = list(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                hidden, pooled_index = self._hidden_states(texts[start : start + batch_size])
                yield start, self._layout(hidden, pooled_index)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Encode ``texts`` to ``[N, 78, hidden]`` float32 on the CPU, in batches of ``batch_size``."""
        texts = list(texts)
        out = torch.empty(len(texts), self.context_length + 1, self.hidden_size)
        for start, block in self.iter_encode(texts, batch_size):
            out[start : start + block.shape[0]] = block
        return out

    def encode_concepts(self, concepts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """A concept's vector is the pooled row of its own embedding (as the released ``inference.py``):
        ``[C, hidden]``."""
        from ..errors import UnreadableTextError

        out = torch.empty(len(concepts), self.hidden_size)
        try:
            for start, block in self.iter_encode(list(concepts), batch_size):
                out[start : start + block.shape[0]] = block[:, 0]
        except UnreadableTextError as exc:  # said of the blacklist, not of "a prompt" (a thirty-eighth hostile pass)
            raise UnreadableTextError(f"a blacklist concept cannot be used: {exc}; remove or respell that concept in "
                                      "the blacklist") from None
        return out

    def is_truncated(self, text: str) -> bool:
        """Whether ``text`` has more tokens than the context (``encode`` cuts it; ``encode_windows`` does not)."""
        count = self.token_count(text)
        return count is not None and count > self.context_length  # None: no claim either way

    def token_count(self, text: str) -> int | None:
        """The tokens this encoder reads for ``text``, its special tokens included; None when it cannot count them
        alone or cannot read the text. What a text costs to encode: the server costs requests by it, since
        characters do not ("!" * 10000 is 10,000 tokens, as many characters of English about 2,000)."""
        try:
            prefix, suffix, _ = self._special_ids()
            return len(prefix) + len(self._alone_ids(text)) + len(suffix)
        except LatentGuardError:
            return None

    def _control_literals(self) -> tuple[str, ...]:
        """The texts this encoder's tokenizer reads as its own control tokens when a prompt holds them
        ("[CLS]", "[SEP]" for BERT; "<|endoftext|>" for Hugging Face CLIP; "<end_of_text>" for open_clip)."""
        if not hasattr(self, "_literals"):
            tok = getattr(self, "tokenizer", None)  # the core control tokens; a learned token added as "special"
            found = {getattr(tok, f"{k}_token", None) for k in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")}
            decoder = getattr(tok, "decoder", None)
            if isinstance(decoder, dict):  # open_clip's SimpleTokenizer: its special ids, spelt out
                found |= {decoder[i] for i in getattr(tok, "all_special_ids", []) if isinstance(decoder.get(i), str)}
            found |= set(GENERATOR_CONTROL_LITERALS)  # what a CLIP generator's tokenizer reads as its own control
            self._literals = tuple(sorted(t for t in found if isinstance(t, str) and len(t) > 1))
        return self._literals

    def _refuse_control_literals(self, texts: Sequence[str]) -> None:
        """Fail closed on a prompt that types one of the tokenizer's control tokens: "[CLS] a naked woman" is read
        by a BERT tokenizer as a control token that the guard's layer was never trained on (ten of them hid
        almost every unsafe prompt from ``mini``), while a generator's tokenizer reads "[CLS]" as plain text;
        CLIP's tokenizer cuts a prompt at a typed "<|endoftext|>" for the pooled row. Matched without case."""
        literals = self._control_literals()
        if not literals:
            return
        for text in texts:
            low = text.lower()
            for literal in literals:
                if literal.lower() in low:
                    raise UnreadableTextError(
                        f"a prompt holds {literal!r}, which the guard's tokenizer ({self.name}) reads as one of its "
                        f"control tokens, not as text, so the guard cannot read the prompt and refuses; remove it "
                        f"first (docs/defences.md)")

    def readable(self, text: str) -> bool:
        """Whether this encoder reads every character of ``text``: a BERT-family tokenizer reads an emoji as its
        unknown token, and a guard refuses such a text rather than judge it as if the character were absent;
        training leaves such texts out for the same reason."""
        try:
            self.refuse_unreadable(text)
        except UnreadableTextError:
            return False
        return True

    def refuse_unreadable(self, text: str) -> None:
        """Raise the :class:`UnreadableTextError` encoding ``text`` would raise, by tokenizing alone: the server
        checks each request's texts when it parses them, so one client's emoji is its own 422 and never fails a
        shared batch (which then had every request in it scored again one by one: a hostile pass more than halved
        other clients' throughput so)."""
        try:
            self._refuse_control_literals([text])
            self._alone_ids(text)
        except UnreadableTextError:
            raise
        except LatentGuardError:  # an encoder that cannot tokenize alone reads what it encodes
            return

    # ------------------------------------------------------------------------- long prompts
    def window_ids(self, text: str, window: int | None = None, stride: int | None = None) -> list[list[int]]:
        """Token ids of each window of ``text``: prefix specials, a slice of its tokens, suffix specials.

        A text that fits yields one window equal to its ordinary (unpadded) tokenisation.
        """
        window = self.context_length if window is None else int(window)
        stride = DEFAULT_WINDOW_STRIDE if stride is None else int(stride)
        prefix, suffix, _ = self._special_ids()
        span = window - len(prefix) - len(suffix)
        if window > self.context_length or span <= 0:
            raise LatentGuardError(f"window must be between {len(prefix) + len(suffix) + 1} and "
                                   f"{self.context_length} tokens for {self.family} encoder '{self.name}', "
                                   f"got {window}")
        if not 0 < stride <= span:
            raise LatentGuardError(f"window stride must be between 1 and {span} tokens (the content of one "
                                   f"window), got {stride}; a larger stride would skip tokens")
        self._refuse_control_literals([text])
        content = self._content_ids(text)
        return [prefix + content[s : s + span] + suffix for s in window_starts(len(content), span, stride)]

    def window_token_strings(self, text: str, window: int | None = None, stride: int | None = None) -> list[list[str]]:
        """The token strings of each window of ``text`` (padded to 77), in :meth:`encode_windows` order."""
        _, _, pad = self._special_ids()
        return [self._ids_to_tokens(ids + [pad] * (self.context_length - len(ids)))
                for ids in self.window_ids(text, window, stride)]

    def iter_encode_windows(self, texts: Sequence[str], batch_size: int = 64, window: int | None = None,
                            stride: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(owner [b], [b, 78, hidden])`` batches of windows; ``owner`` indexes ``texts``."""
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        _, _, pad = self._special_ids()
        length = self.context_length
        windows: list[list[int]] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for ids in self.window_ids(text, window, stride):
                windows.append(ids)
                owners.append(i)
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                chunk = windows[start : start + batch_size]
                input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
                attention_mask = torch.zeros(len(chunk), length, dtype=torch.long)
                for row, ids in enumerate(chunk):
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, : len(ids)] = 1
                hidden, pooled_index = self._forward_ids(input_ids, attention_mask)
                yield (torch.tensor(owners[start : start + batch_size], dtype=torch.long),
                       self._layout(hidden, pooled_index))

    def encode_windows(self, texts: Sequence[str], batch_size: int = 64, window: int | None = None,
                       stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts of any length as overlapping windows: ``(emb [W, 78, hidden], owner [W])``.

        Each window is a complete input of its own (start token, up to 75 tokens of the prompt, end
        token, padding to 77) in the usual 78-row layout; ``owner[w]`` is the index of the prompt
        window ``w`` came from. A prompt that fits the context gives exactly one window, identical
        to :meth:`encode`. Score each window and take the maximum per prompt
        (:func:`latentguard.scoring.max_over_windows`).
        """
        owners, blocks = [], []
        for owner, block in self.iter_encode_windows(list(texts), batch_size, window, stride):
            owners.append(owner)
            blocks.append(block)
        if not blocks:
            return torch.empty(0, self.context_length + 1, self.hidden_size), torch.empty(0, dtype=torch.long)
        return torch.cat(blocks), torch.cat(owners)
