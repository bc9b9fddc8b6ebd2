"""Safe file I/O: atomic writes, checked downloads and strict prompt-file reading.

Every artefact (checkpoint, cache, results) is written to a temporary file in the same directory,
flushed to disk, then renamed over the target: a crash or ``kill -9`` leaves either the old file
or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from .errors import LatentGuardError

RELEASED_CHECKPOINT_URL = "https://github.com/rt219/LatentGuard/raw/main/model_parameters.pth"
RELEASED_CHECKPOINT_SHA256 = "02315494f35e819dc627ba858408d571e06a594590e8bd4026ba63f0922da231"
COPRO_URL = "https://raw.githubusercontent.com/rt219/LatentGuard/main/dataset/CoPro_v1.0.json"


def cache_home() -> Path:
    """Where downloads and concept caches live: ``$LATENTGUARD_HOME`` or ``~/.cache/latentguard``."""
    root = os.environ.get("LATENTGUARD_HOME")
    return Path(root) if root else Path.home() / ".cache" / "latentguard"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync and rename it over ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LatentGuardError(f"cannot write {target}: a path above it is a file, not a directory "
                               f"(choose another output path)") from None
    if target.is_dir():
        raise LatentGuardError(f"cannot write {target}: it is a directory (choose a file name)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes 0600 files; give the result the mode an ordinary open() would (umask applied).
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    """``0o666`` less the process umask: what a plain ``open(path, "w")`` would create."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: object, target: str | Path) -> None:
    """``torch.save`` to ``target`` atomically, so an interrupted save never corrupts a checkpoint."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: str | Path, sha256: str | None = None, what: str = "file") -> Path:
    """Download ``url`` to ``target`` with a progress bar, atomically, checking ``sha256`` if given.

    Failure raises a one-line :class:`LatentGuardError` that names the address and the place to put
    the file by hand.
    """
    from tqdm import tqdm

    target = Path(target)
    by_hand = f"download {url} yourself and save it as {target}"
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
            if sha256 is not None and digest.hexdigest() != sha256:
                raise LatentGuardError(
                    f"{what} from {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; "
                    f"the download is corrupt or was tampered with: {by_hand}"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LatentGuardError(f"cannot download {what} from {url} ({reason}); {by_hand}") from None
    return target


def released_checkpoint(path: str | Path = "model_parameters.pth") -> Path:
    """Return a path to the released weights: ``path`` if it exists, else a verified cached download.

    Only the bare released file name (no directory) triggers a download; any other missing path is
    an error, so a typo such as ``runs/tyop/model_parameters.pth`` never silently swaps in the
    released weights.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.name != "model_parameters.pth" or path.parent != Path("."):
        raise LatentGuardError(f"checkpoint not found: {path} (check --checkpoint; omit it to use the released "
                               "model_parameters.pth)")
    cached = cache_home() / "model_parameters.pth"
    if cached.is_file():
        if sha256_of(cached) == RELEASED_CHECKPOINT_SHA256:
            return cached
        cached.unlink()  # a stale or corrupt copy: fetch it again
    return download(RELEASED_CHECKPOINT_URL, cached, RELEASED_CHECKPOINT_SHA256, what="released checkpoint")


def read_text(path: str | Path, what: str = "file") -> str:
    """Read a UTF-8 text file; a missing file or a bad byte is a one-line error naming the line."""
    path = Path(path)
    if not path.exists():
        raise LatentGuardError(f"{what} not found: {path}")
    if not path.is_file():
        raise LatentGuardError(f"{what} is not a regular file: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LatentGuardError(
            f"{path}: line {line} is not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        ) from None


def read_lines(path: str | Path, what: str = "prompt file") -> list[str]:
    """Read one item per line (UTF-8, blank lines skipped), with one-line errors for bad files."""
    text = read_text(path, what)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise LatentGuardError(f"{what} is empty: {path} (put one entry per line)")
    return lines


def resolve_device(device: str | None = None) -> "torch.device":  # noqa: F821
    """``None``/``'auto'`` picks CUDA when present, else CPU; anything else is passed to torch."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LatentGuardError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LatentGuardError(f"device '{device}' requested but CUDA is not available here (use --device cpu)")
    return resolved


def unique(items: Sequence[str]) -> list[str]:
    """Deduplicate while keeping first-seen order."""
    return list(dict.fromkeys(items))
