"""What a benchmark directory has already scored, so a rerun resumes and never mixes settings.

``OUTPUT/.benchmark-state/`` holds ``settings.json`` (everything a score depends on: weights, encoder,
blacklist, threshold, the code that judges, baselines, sampling), one ``NAME.npz`` + ``NAME.json`` per
finished set (its scores, and the content id of the distinct texts they belong to) and, while a set is being scored,
``NAME/chunk-NNNNNN.npz`` files of a few thousand texts each, written atomically. A rerun skips
finished sets and finished chunks; a rerun with other settings refuses in one line unless
``--force`` (which rescores the sets it is given). Only files this module wrote are ever removed.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import LatentGuardError
from ...guard.identity import CODE_CHANGED
from .scorers import MethodOutput

STATE_DIR = ".benchmark-state"
CHUNK = 4096  # distinct texts per resumable chunk
FORMAT = 1


def content_id(texts: Sequence[str]) -> str:
    """SHA-256 of the distinct texts in order: what a set's scores belong to (the file's bytes may differ)."""
    digest = hashlib.sha256(f"{FORMAT}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from ...io import atomic_path

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _pack(outputs: dict[str, MethodOutput]) -> dict[str, np.ndarray]:
    arrays = {}
    for key, out in outputs.items():
        arrays[f"{key}.score"], arrays[f"{key}.concept"] = out.score, out.concept
        if out.flagged is not None:
            arrays[f"{key}.flagged"] = out.flagged
    return arrays


def _unpack(path: Path, keys: Sequence[str], n: int) -> dict[str, MethodOutput] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: MethodOutput(data[f"{k}.score"].astype(np.float64),
                                   data[f"{k}.flagged"].astype(bool) if f"{k}.flagged" in data else None,
                                   data[f"{k}.concept"].astype(np.int64)) for k in keys}
    except (OSError, KeyError, ValueError):
        return None  # unreadable or foreign: scored again
    if any(o.score.shape != (n,) or not np.isfinite(o.score).all() for o in out.values()):
        return None
    return out


class RunState:
    """The state of one output directory for one set of ``settings`` (opened by :meth:`open`)."""

    def __init__(self, output_dir: str | Path, settings: dict[str, Any], *, force: bool = False) -> None:
        self.dir = Path(output_dir) / STATE_DIR
        self.settings = json.loads(json.dumps(settings, sort_keys=True))  # as it reads back (tuples -> lists)
        self.force = force
        self.id = _digest(settings)
        self._forced: set[str] = set()

    def open(self) -> "RunState":
        """Refuse a directory holding results made with other settings (unless ``force``), then record ours."""
        from ...io import atomic_write_text

        recorded = self.dir / "settings.json"
        if recorded.is_file() and not self.force:
            try:
                old = json.loads(recorded.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != self.settings:
                old = old if isinstance(old, dict) else {}
                keys = sorted(k for k in set(self.settings) | set(old) if old.get(k) != self.settings.get(k))
                code = f"; {CODE_CHANGED} they were made" if "code" in keys else ""
                raise LatentGuardError(f"{self.dir.parent} holds benchmark results made with other settings "
                                       f"(different: {', '.join(keys)}{code}); use another --output-dir, or --force "
                                       "to rescore the sets of this run")
        atomic_write_text(recorded, json.dumps(self.settings, indent=1, sort_keys=True) + "\n")
        return self

    def finished(self, name: str, texts: Sequence[str], keys: Sequence[str]) -> dict[str, MethodOutput] | None:
        """A set's scores when it was finished with these settings and these texts, else ``None``."""
        marker = self.dir / f"{name}.json"
        if self.force or not marker.is_file():
            return None
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("settings") != self.id:
            return None
        if record.get("content") != content_id(texts):
            raise LatentGuardError(f"{name} in {self.dir.parent} was scored from other prompts ({record.get('file')});"
                                   f" use another --output-dir, or --force to rescore it")
        return _unpack(self.dir / f"{name}.npz", keys, len(texts))

    def score(self, name: str, texts: Sequence[str], methods: Sequence[Callable], info: dict[str, Any],
              progress: bool = True) -> dict[str, MethodOutput]:
        """Score ``texts`` with every method, chunk by chunk; chunks finished before are read back."""
        from tqdm import tqdm

        keys = [m.key for m in methods]
        content = content_id(texts)
        chunks = self.dir / name
        if self.force and name not in self._forced:
            self._forced.add(name)
            self._clear(name)
        parts: list[dict[str, MethodOutput]] = []
        with tqdm(total=len(texts), desc=f"scoring {name}", unit="prompt", disable=not progress) as bar:
            for number, start in enumerate(range(0, len(texts), CHUNK)):
                block = list(texts[start : start + CHUNK])
                path = chunks / f"chunk-{number:06d}.npz"
                tag = hashlib.sha256(f"{self.id}:{content}:{start}".encode()).hexdigest()
                part = _unpack(path, keys, len(block)) if path.is_file() and self._tag(path) == tag else None
                if part is None:
                    part = {m.key: m(block, bar.update) for m in methods}
                    arrays = _pack(part)
                    arrays["tag"] = np.array(tag)
                    _save_npz(path, arrays)
                else:
                    bar.update(len(block))
                parts.append(part)
        outputs = {k: MethodOutput(np.concatenate([p[k].score for p in parts]),
                                   None if parts[0][k].flagged is None else
                                   np.concatenate([p[k].flagged for p in parts]),
                                   np.concatenate([p[k].concept for p in parts])) for k in keys}
        self._finish(name, outputs, content, info)
        return outputs

    def finished_names(self) -> list[str]:
        """Sets finished in this directory with these settings (their CSVs are kept when another run skips them)."""
        names = []
        for marker in sorted(self.dir.glob("*.json")):
            if marker.name == "settings.json":
                continue
            try:
                if json.loads(marker.read_text(encoding="utf-8")).get("settings") == self.id:
                    names.append(marker.stem)
            except (OSError, ValueError):
                continue
        return names

    @staticmethod
    def _tag(path: Path) -> str | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                return str(data["tag"]) if "tag" in data else None
        except (OSError, ValueError):
            return None

    def _finish(self, name: str, outputs: dict[str, MethodOutput], content: str, info: dict[str, Any]) -> None:
        from ...io import atomic_write_text

        _save_npz(self.dir / f"{name}.npz", _pack(outputs))
        record = {"settings": self.id, "content": content, "file": info.get("file"), "sha256": info.get("sha256")}
        atomic_write_text(self.dir / f"{name}.json", json.dumps(record, indent=1) + "\n")
        self._clear_chunks(name)

    def _clear(self, name: str) -> None:
        for path in (self.dir / f"{name}.json", self.dir / f"{name}.npz"):
            if path.is_file():
                path.unlink()
        self._clear_chunks(name)

    def _clear_chunks(self, name: str) -> None:
        folder = self.dir / name
        if folder.is_dir():
            for chunk in folder.glob("chunk-*.npz"):  # only our own chunk files; anything else stays
                chunk.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
