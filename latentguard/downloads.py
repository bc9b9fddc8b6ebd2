"""Downloads of files the project knows by their checksums (weights, datasets, benchmark sets).

Kept apart from :mod:`latentguard.io` (local files) because only fetching needs the network, and so that a
reader of either module sees one concern."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .errors import LatentGuardError
from .io import atomic_path, free_name, git_blob_id


def offline() -> bool:
    """Whether the user declared no network (Hugging Face's own switches): the one test of every command and of
    :func:`download` itself, so that nothing reaches the network after the user said it must not."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def download(url: str, target: str | Path, sha256: str | None = None, what: str = "file",
             git_blob: str | None = None) -> Path:
    """Download ``url`` to ``target`` with a progress bar, atomically, checking ``sha256`` and the git
    blob id ``git_blob`` when given.

    Failure raises a one-line :class:`LatentGuardError` that names the address and the place to put
    the file by hand; a download that fails a check is moved aside to ``<target>.mismatch-<n>``
    (named in the message), never used.
    """
    from tqdm import tqdm

    target = Path(target)
    by_hand = f"download {url} yourself and save it as {target}"
    if offline() and not url.startswith("file:"):  # the boundary: offline, no request leaves the machine
        raise LatentGuardError(f"offline (HF_HUB_OFFLINE) and not here: {what} {target} ({by_hand}); nothing was "
                               "downloaded")
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                digest = hashlib.sha256()
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {what}") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            found = None
            if sha256 is not None and digest.hexdigest() != sha256:
                found = f"SHA-256 {digest.hexdigest()}, expected {sha256}"
            elif git_blob is not None and git_blob_id(tmp) != git_blob:
                found = f"git blob id {git_blob_id(tmp)}, expected {git_blob}"
            if found:
                aside = free_name(target, "mismatch")
                os.replace(tmp, aside)
                raise LatentGuardError(
                    f"{what} from {url} has {found}; the download is corrupt or was tampered with and was not "
                    f"used (kept as {aside}): {by_hand}"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LatentGuardError(f"cannot download {what} from {url} ({reason}); {by_hand}") from None
    return target
