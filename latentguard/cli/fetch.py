"""What a command will fetch, checked before it starts: everything missing said in one line, at once.

Offline (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set), a first run used to meet its missing pieces one
at a time (CoPro, then the released weights, then CLIP after a minute of hub retries). :func:`validate_fetchable`
looks for each piece locally first (the files, our download cache, the Hugging Face cache with no network
call); offline, it refuses with all of them; online, it downloads the missing files now and, if a download
fails, names the others too (the encoder is then not tried: the hub would only retry).
"""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..constants import DEFAULT_CHECKPOINT
from ..downloads import offline
from ..errors import LatentGuardError
from ..io import latentguard_home


def _encoder_cached(name: str) -> bool:
    """A local directory, an open_clip name (its own loader reports), or a hub model in the local cache."""
    from ..encoders.known import KNOWN_ENCODERS

    if Path(name).expanduser().exists() or name.startswith(("openclip:", "hf-hub:")) or name in KNOWN_ENCODERS:
        return True  # a known encoder loads from its package offline; without it, its loader says what to install
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an invalid repo id: the loader says so in its own words
        return True


def validate_fetchable(cfg: Config, *, dataset: bool = False, checkpoint: bool = False, encoder: bool = False) -> None:
    """Refuse in one line, before any work, when pieces the command needs are neither here nor fetchable."""
    from ..data.copro import RELEASED_NAME, fetch_copro
    from ..model.checkpoint import released_checkpoint
    from ..published import COPRO_URL, RELEASED_CHECKPOINT_URL

    missing: list[str] = []   # not here and not fetchable as named
    fetch: list[tuple[str, object]] = []  # not here, fetchable: (what, how)
    if dataset:  # each fetch binds its own path (a late-bound one would write CoPro over the checkpoint's name)
        path = Path(cfg.dataset)
        if not path.exists():
            if path.name != RELEASED_NAME:
                missing.append(f"dataset not found: {path} (--dataset)")
            else:
                fetch.append((f"the CoPro dataset {path} (download {COPRO_URL} and save it there)",
                              lambda copro=path: fetch_copro(copro)))
    if checkpoint and cfg.checkpoint:
        path = Path(cfg.checkpoint)
        cached = latentguard_home() / DEFAULT_CHECKPOINT
        if not path.is_file() and path.name == DEFAULT_CHECKPOINT and path.parent == Path(".") \
                and not cached.is_file():
            fetch.append((f"the released weights {DEFAULT_CHECKPOINT} (download {RELEASED_CHECKPOINT_URL} and save it "
                          f"as {cached} or ./{DEFAULT_CHECKPOINT})", lambda weights=path: released_checkpoint(weights)))
    no_encoder = []
    if encoder and cfg.encoder.type != "openclip" and not _encoder_cached(str(cfg.encoder.name)):
        no_encoder.append(f"the text encoder {cfg.encoder.name} (not in the Hugging Face cache: run once online, or "
                          "pass --encoder DIR saved with save_pretrained())")
    if offline():
        gone = missing + [what for what, _ in fetch] + no_encoder
        if gone:
            raise LatentGuardError("offline (HF_HUB_OFFLINE) and not here: " + "; ".join(gone)
                                   + "; nothing was downloaded")
        return
    if missing:
        raise LatentGuardError("; ".join(missing) + "; nothing was downloaded")
    failed = None
    for what, how in fetch:
        try:
            how()
        except LatentGuardError as exc:
            failed = failed or str(exc)
            missing.append(what)
    if failed:
        rest = [m for m in missing[1:]] + no_encoder
        raise LatentGuardError(failed + (f"; also missing: {'; '.join(rest)}" if rest else ""))
