"""On-disk embedding store: text -> 78 x hidden encoder states, built once, read by row.

Why not the released cache (one Python dict of fp32 tensors, ~30 GB, loaded whole)? Full CoPro is
~125k texts; held in memory that does not fit most machines, and a crash during the hours-long
build loses everything. This store keeps one flat array file that only ever grows by appending,
and an append-only index of texts, so:

* memory: rows are read with ``pread`` into a fresh buffer per request and written per batch, so
  peak RSS depends on the batch, never on the number of stored texts (``memmap()`` is there for
  callers that want a zero-copy view);
* disk: fp16 by default (78 x 768 x 2 B = 117 KiB per text, ~15 GB for full CoPro); fp32 optional;
* crash safety: a batch's rows are appended to the data file and fsynced *before* their index lines
  are appended and fsynced. A row exists only once its index line is complete, so a Ctrl-C or
  ``kill -9`` at any instant leaves, at worst, data rows beyond the committed count or a torn last
  index line; readers ignore both, and only the next writer, holding the lock, truncates them;
* readers never modify: any other damage (a bad line in the middle, an index line without its data
  row, a non-finite row) is refused with a one-line error naming the file and line, and repaired
  only on request by ``prepare.py --repair STORE`` (:mod:`latentguard.store.repair`), which keeps
  the original index beside it (what counts as damage: :mod:`latentguard.store.damage`);
* concurrent builders share work: each batch is chosen, encoded and written under the lock, so a
  second ``prepare.py`` skips what the first has written instead of encoding everything again;
* encoders never mix: the store records the encoder's identity and refuses any other.

Layout of a store directory: ``meta.json`` (format, identity, hidden size, dtype; written once,
atomically, before anything else), ``embeddings.f16`` or ``embeddings.f32`` (raw rows), ``index.jsonl``
(one JSON string per line, line i naming row i; ``null`` marks a row whose text a repair dropped)
and ``.lock`` (writers take an exclusive ``flock``, so two builds of the same store cooperate
instead of corrupting it). Where a store lives and how the commands open it:
:mod:`latentguard.store.locate`.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from ..constants import EMBEDDING_ROWS
from ..errors import LatentGuardError
from ..io import atomic_write_text, fsync_dir, open_regular, unique
from .damage import BAD_LINE, bad_rows, parse_index_line

if TYPE_CHECKING:  # torch is imported lazily: opening a store and checking for missing texts stay light
    import torch

try:  # POSIX only; elsewhere a single writer per store is the user's responsibility
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

ROWS = EMBEDDING_ROWS  # pooled state + 77 token states (the layout of latentguard.encoders.base)
FORMAT = "latentguard-embedding-store"
VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
_SUFFIX = {"float16": "f16", "float32": "f32"}
META, INDEX, LOCK = "meta.json", "index.jsonl", ".lock"


class EmbeddingStore:
    """Append-only, crash-safe map from text to a ``[78, hidden]`` embedding.

    Open an existing store with ``EmbeddingStore(path)``; ``create=True`` (with ``identity`` and
    ``hidden_size``) makes it when absent. ``dtype`` is the on-disk precision for a new store; an
    existing store keeps its own, and only a writer (``create=True``) asking for another is refused.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        identity: str | None = None,
        hidden_size: int | None = None,
        dtype: str = "float16",
        create: bool = False,
    ) -> None:
        self._open(path, identity, hidden_size, dtype, create)
        self._refresh()  # readers never modify: leftovers of a crash are ignored here, repaired by writers

    def _open(self, path: str | Path, identity: str | None, hidden_size: int | None, dtype: str, create: bool) -> None:
        self.path = Path(path)
        if dtype not in DTYPES:
            raise LatentGuardError(f"store dtype must be float16 or float32, got {dtype!r}")
        meta_file = self.path / META
        if self.path.exists() and not self.path.is_dir():
            raise LatentGuardError(f"embedding store path {self.path} exists but is not a directory")
        if not meta_file.is_file():
            if not create:
                raise LatentGuardError(
                    f"no embedding store at {self.path}; run prepare.py with the same --encoder and --store-dir first"
                )
            if identity is None or hidden_size is None:
                raise LatentGuardError("creating an embedding store needs the encoder's identity and hidden size")
            self._create(identity, int(hidden_size), dtype)
        meta = self._read_meta(meta_file)
        self.identity: str = meta["identity"]
        self.hidden_size: int = int(meta["hidden_size"])
        self.dtype: str = meta["dtype"]
        if identity is not None and identity != self.identity:
            raise LatentGuardError(
                f"embedding store {self.path} was built with encoder {self.identity}, not {identity}; "
                "use another --store-dir or rebuild"
            )
        if hidden_size is not None and int(hidden_size) != self.hidden_size:
            raise LatentGuardError(
                f"embedding store {self.path} holds hidden size {self.hidden_size}, not {hidden_size}; "
                "use another --store-dir or rebuild"
            )
        if create and dtype != self.dtype:
            raise LatentGuardError(
                f"embedding store {self.path} holds {self.dtype} embeddings, not {dtype}; "
                f"use --dtype {self.dtype}, another --store-dir, or delete the store to rebuild it"
            )
        self._np_dtype = np.dtype(DTYPES[self.dtype])
        self.row_bytes = ROWS * self.hidden_size * self._np_dtype.itemsize
        self.data_file = self.path / f"embeddings.{_SUFFIX[self.dtype]}"
        self.index_file = self.path / INDEX
        self._rows: dict[str, int] = {}
        self._count = 0  # committed rows: index lines that have their data
        self._index_bytes = 0  # end of the last committed index line
        self._read_fd: int | None = None

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._count

    def __contains__(self, text: object) -> bool:
        return text in self._rows

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, {self._count} texts, {self.dtype}, hidden {self.hidden_size})"

    def texts(self) -> list[str]:
        """Stored texts in row order."""
        return sorted(self._rows, key=self._rows.__getitem__)

    def missing(self, texts: Iterable[str]) -> list[str]:
        """The texts (deduplicated, first-seen order) that are not stored yet."""
        return [t for t in unique(list(texts)) if t not in self._rows]

    def get(self, texts: Sequence[str]) -> "torch.Tensor":
        """``[len(texts), 78, hidden]`` float32 CPU tensor, in the order asked.

        Rows are read in ascending file order (adjacent rows in one ``pread``) and then put back
        in the requested order; nothing but the requested rows is ever in memory.
        """
        import torch

        texts = list(texts)
        gone = [t for t in texts if t not in self._rows]
        if gone:
            self._refresh()  # another process may have added them since we opened
            gone = unique([t for t in texts if t not in self._rows])
        if gone:
            shown = ", ".join(repr(_short(t)) for t in gone[:3]) + (", ..." if len(gone) > 3 else "")
            raise LatentGuardError(
                f"{len(gone)} text(s) missing from embedding store {self.path}: {shown}; "
                "run prepare.py with the same dataset, --encoder and --store-dir to add them"
            )
        out = np.empty((len(texts), ROWS, self.hidden_size), dtype=np.float32)
        if texts:
            rows = np.fromiter((self._rows[t] for t in texts), dtype=np.int64, count=len(texts))
            order = np.argsort(rows, kind="stable")
            wanted = np.unique(rows[order])
            buf = np.empty((len(wanted), ROWS, self.hidden_size), dtype=self._np_dtype)
            fd = self._reader()
            start = 0
            while start < len(wanted):  # coalesce runs of consecutive rows into one read
                end = start + 1
                while end < len(wanted) and wanted[end] == wanted[end - 1] + 1:
                    end += 1
                view = memoryview(buf[start:end]).cast("B")
                offset = int(wanted[start]) * self.row_bytes
                got = 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], offset + got)
                    if n <= 0:  # the data file shrank under us
                        raise self._damaged(self.data_file, f"row {int(wanted[start])} is cut off")
                    got += n
                start = end
            self._check_rows(buf, wanted)
            out[:] = buf[np.searchsorted(wanted, rows)]
        return torch.from_numpy(out)

    def _check_rows(self, buf: np.ndarray, rows: np.ndarray) -> None:
        """Refuse rows no encoder writes (:mod:`latentguard.store_checks`), at ~15% of a 64-row read
        from the page cache. Finite, non-zero garbage cannot be told apart from an embedding."""
        nonfinite, zero = bad_rows(buf)
        bad, what = (nonfinite, "non-finite values") if nonfinite.any() else (zero, "only zero bytes")
        if bad.any():
            row = int(rows[int(np.argmax(bad))])
            text = next((t for t, r in self._rows.items() if r == row), None)
            raise self._damaged(f"embedding store {self.path}",
                                f"row {row} (text {_short(text or '?')!r}) holds {what}")

    def memmap(self) -> np.memmap | np.ndarray:
        """Read-only ``[len, 78, hidden]`` view of the committed rows, in store dtype (zero-copy)."""
        if self._count == 0:
            return np.empty((0, ROWS, self.hidden_size), dtype=self._np_dtype)
        return np.memmap(self.data_file, dtype=self._np_dtype, mode="r", shape=(self._count, ROWS, self.hidden_size))

    def row(self, text: str) -> int:
        """Row number of ``text`` in :meth:`memmap`."""
        if text not in self._rows:
            self.get([text])  # raises the helpful error
        return self._rows[text]

    def disk_bytes(self) -> int:
        """Bytes the store occupies on disk (data + index + meta)."""
        return sum(p.stat().st_size for p in (self.data_file, self.index_file, self.path / META) if p.exists())

    def close(self) -> None:
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict:
        """Picklable for DataLoader workers: the file descriptor is reopened on demand."""
        state = self.__dict__.copy()
        state["_read_fd"] = None
        return state

    # ------------------------------------------------------------------ writing
    def add(self, texts: Sequence[str], embeddings: "torch.Tensor | np.ndarray") -> None:
        """Append the embeddings of texts not stored yet; durable (fsynced) once this returns."""
        texts = list(texts)
        array = self._as_rows(embeddings, len(texts))
        for t in texts:
            if not isinstance(t, str):
                raise LatentGuardError(f"store keys must be strings, got {type(t).__name__}")
        with self._locked(blocking=True):
            self._refresh()
            self._repair()
            self._add_locked(texts, array)

    def _add_locked(self, texts: list[str], array: np.ndarray) -> None:
        """Append rows for texts not stored yet (the caller holds the lock and has refreshed)."""
        seen: set[str] = set()
        keep: list[int] = []
        for i, t in enumerate(texts):
            if t not in self._rows and t not in seen:
                seen.add(t)
                keep.append(i)
        if not keep:
            return
        with np.errstate(over="ignore"):  # checked just below, with a clear message
            rows = np.ascontiguousarray(array[keep], dtype=self._np_dtype)
        if not np.isfinite(rows).all():
            what = "overflow float16; use --dtype float32" if np.isfinite(array[keep]).all() else "are not finite"
            raise LatentGuardError(f"embeddings for the store {what} (first text: {_short(texts[keep[0]])!r})")
        lines = "".join(json.dumps(texts[i], ensure_ascii=False) + "\n" for i in keep).encode("utf-8")
        _append(self.data_file, rows.tobytes(), self._count * self.row_bytes)  # 1. data, fsynced
        _append(self.index_file, lines, self._index_bytes)  # 2. then the index lines commit it
        for i in keep:
            self._rows[texts[i]] = self._count
            self._count += 1
        self._index_bytes += len(lines)

    def build(self, texts: Iterable[str], encoder: Any, *, batch_size: int = 64, progress: bool = True) -> int:
        """Encode and store the texts not stored yet, batch by batch; returns how many were encoded.

        Each batch is durable before the next starts, so an interrupted build loses at most one
        batch of work and the same call resumes it.
        """
        from tqdm import tqdm

        identity = getattr(encoder, "identity", None)
        if identity != self.identity:
            raise LatentGuardError(
                f"embedding store {self.path} was built with encoder {self.identity}, not {identity}; "
                "use another --store-dir or rebuild"
            )
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        todo = self.missing(texts)
        if not todo:
            return 0
        encoded = position = 0
        with tqdm(total=len(todo), unit="texts", desc="encoding", disable=not progress, dynamic_ncols=True) as bar:
            while position < len(todo):
                # Choose, encode and write each batch under the lock: a concurrent builder of the
                # same store waits here, then skips the texts this one has just written.
                with self._locked(blocking=True):
                    self._refresh()
                    self._repair()
                    batch: list[str] = []
                    start = position
                    while position < len(todo) and len(batch) < batch_size:
                        if todo[position] not in self._rows:
                            batch.append(todo[position])
                        position += 1
                    if batch:
                        self._add_locked(batch, self._as_rows(encoder.encode(batch, batch_size=batch_size), len(batch)))
                        encoded += len(batch)
                bar.update(position - start)
        return encoded

    # ------------------------------------------------------------------ internals
    def _create(self, identity: str, hidden_size: int, dtype: str) -> None:
        if hidden_size <= 0:
            raise LatentGuardError(f"hidden size must be positive, got {hidden_size}")
        if self.path.is_dir():
            strangers = [p.name for p in self.path.iterdir()
                         if p.name not in (LOCK,) and not p.name.startswith(f".{META}.")]
            if strangers:
                raise LatentGuardError(
                    f"{self.path} is not an embedding store (no {META}, but holds {strangers[0]}); "
                    "use another --store-dir"
                )
        meta = {"format": FORMAT, "version": VERSION, "identity": identity, "hidden_size": hidden_size,
                "rows": ROWS, "dtype": dtype}
        atomic_write_text(self.path / META, json.dumps(meta, indent=2) + "\n")

    def _read_meta(self, meta_file: Path) -> dict:
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LatentGuardError(f"{meta_file}: unreadable store metadata ({exc}); "
                                   f"delete {self.path} and rebuild") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise LatentGuardError(f"{meta_file}: not a latentguard embedding store; use another --store-dir")
        if meta.get("version") != VERSION:
            raise LatentGuardError(f"{meta_file}: store format version {meta.get('version')} is not supported "
                                   f"(expected {VERSION}); rebuild it")
        hidden = meta.get("hidden_size")
        if meta.get("dtype") not in DTYPES or meta.get("rows") != ROWS or not isinstance(meta.get("identity"), str) \
                or isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise LatentGuardError(f"{meta_file}: malformed store metadata; delete {self.path} and rebuild")
        return meta

    def _data_rows(self) -> int:
        try:
            return self.data_file.stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def _refresh(self) -> None:
        """Read index lines committed since last time (by us or another writer); never modifies.

        A last piece without a newline is a write in progress or torn by a crash, and data rows
        beyond the index are a batch whose index never landed: both are ignored. Any other
        anomaly is damage no crash leaves, and is refused with the file and line.
        """
        try:
            with open(self.index_file, "rb") as handle:
                handle.seek(self._index_bytes)
                tail = handle.read()
        except FileNotFoundError:
            return
        if not tail:
            return
        data_rows = self._data_rows()  # after reading the index: data is fsynced before its lines
        position = 0
        while True:
            newline = tail.find(b"\n", position)
            if newline < 0:
                break
            line = self._count + 1
            text = parse_index_line(tail[position:newline])
            if text is BAD_LINE:
                raise self._damaged(self.index_file, f"line {line} is not a JSON string")
            if self._count >= data_rows:
                raise self._damaged(self.index_file, f"line {line} has no data row ({self.data_file.name} holds "
                                    f"{data_rows} rows)")
            if text is not None:
                self._rows.setdefault(text, self._count)
            self._count += 1
            position = newline + 1
        self._index_bytes += position

    def _repair(self) -> None:
        """Drop what an interrupted writer left: a torn last index line, orphan data rows (under the lock)."""
        data_rows = self._data_rows()
        if data_rows < self._count:  # rows lost under us: appending now would leave a hole
            raise self._damaged(self.index_file, f"line {data_rows + 1} has no data row ({self.data_file.name} "
                                f"holds {data_rows} rows)")
        for file, size in ((self.index_file, self._index_bytes), (self.data_file, self._count * self.row_bytes)):
            if file.exists() and file.stat().st_size > size:
                with open(file, "rb+") as handle:
                    handle.truncate(size)
                    handle.flush()
                    os.fsync(handle.fileno())

    def _damaged(self, where: str | Path, what: str) -> LatentGuardError:
        """The one-line refusal of damage no crash leaves, naming the command that repairs it on request."""
        return LatentGuardError(f"{where}: {what}, so the store is damaged (readers do not change it); run: python "
                                f"prepare.py --repair {self.path}   (keeps every intact row and says what it dropped; "
                                "prepare.py then re-encodes those)")

    def _as_rows(self, embeddings: "torch.Tensor | np.ndarray", count: int) -> np.ndarray:
        """``embeddings`` as a float array of ``count`` rows of this store's shape, or a one-line error."""
        array = embeddings.detach().cpu().float().numpy() if hasattr(embeddings, "detach") else np.asarray(embeddings)
        expected = (count, ROWS, self.hidden_size)
        if tuple(array.shape) != expected:
            raise LatentGuardError(f"embeddings for the store must have shape {list(expected)}, "
                                   f"got {list(array.shape)}")
        return array

    def _reader(self) -> int:
        if self._read_fd is None:
            self._read_fd = os.open(self.data_file, os.O_RDONLY)
        return self._read_fd

    @contextlib.contextmanager
    def _locked(self, blocking: bool) -> Iterator[None]:
        fd = open_regular(self.path / LOCK, os.O_RDWR | os.O_CREAT, "store lock")
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _append(file: Path, payload: bytes, expected_size: int) -> None:
    """Write ``payload`` at ``expected_size`` (the committed end) and fsync before returning."""
    new = not file.exists()
    try:
        fd = open_regular(file, os.O_WRONLY | os.O_CREAT, "store file")
        try:
            view = memoryview(payload)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], expected_size + written)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # a full disk says only "No space left on device": name the file, say what holds
        raise LatentGuardError(f"cannot write {file}: {exc.strerror or exc}; the store keeps every row written "
                               "before (free space, then run the same command again to resume)") from None
    if new:
        fsync_dir(file.parent)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
