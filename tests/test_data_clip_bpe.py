"""CLIP's BPE as the defences run it (latentguard/data/clip_bpe.py) against open_clip's own tokenizer."""
from __future__ import annotations

import random
import string

from latentguard.data.clip_bpe import byte_symbols, clip_pieces


def test_the_pieces_are_open_clips_on_random_words_and_glued_ones():
    from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode

    assert byte_symbols() == bytes_to_unicode()
    generator = SimpleTokenizer()
    rng = random.Random(0)
    words = ["bloodycorpse", "oftorture", "naked上woman", "bloodhound", "日本語", "héllo", "a"]
    words += ["".join(rng.choice(string.ascii_lowercase + "éü上") for _ in range(rng.randint(1, 14)))
              for _ in range(1500)]
    for word in words:
        ids = generator.encode(word)
        assert len(clip_pieces(word)) == len(ids), word
        expected = [generator.decoder[i].removesuffix("</w>") for i in ids]
        decoded = [bytes(generator.byte_decoder[c] for c in piece).decode("utf-8", "replace") for piece in expected]
        assert [p if p is not None else "\ufffd" for p in clip_pieces(word)] == [
            d if "\ufffd" not in d else "\ufffd" for d in decoded], word
    assert clip_pieces("bloodycorpse") == ("bloody", "corpse")
    assert clip_pieces("naked上woman") == ("naked", None, None, "woman")  # 上 cut into two byte pieces


def test_reading_the_vocabulary_does_not_import_torch():
    """The defences read it on the first glued word; importing open_clip (torch, timm) took 5 s there."""
    import subprocess
    import sys

    code = ("import sys; from latentguard.data.clip_bpe import clip_pieces; clip_pieces('bloodycorpse'); "
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
