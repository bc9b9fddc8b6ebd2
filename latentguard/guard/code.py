"""The code's identity: a digest of latentguard's own source files that decide verdicts and sanitized edits.

Why a digest and not ``__version__``: the version stayed "0.1.0" across commits that changed verdicts (the text
defences change often), so a run directory finished by older code was read back as this code's results (a
hostile review). Every run directory records :func:`code_identity` within the guard's identity
(:func:`latentguard.guard.identity.guard_identity`) and a rerun by other code is refused. Nobody has to remember
to bump it: any change to a file listed in :data:`JUDGING` changes it, comments included (failing closed: a
needless rescore costs time, a stale result costs a wrong number). Files are read through
:mod:`importlib.resources`, so an installed (non-editable) package is digested the same way as a checkout.
Computed once per process: the tree under test or in use does not change while it runs.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources

from ..errors import LatentGuardError

# What takes part in judging: folders (every .py file in them) and files, relative to the package. Readers
# (bulk, io, csv_files, regular_files, yaml_files) decide which rows, texts and concepts are judged; published and
# constants hold thresholds and sizes; eval's are the benchmark's baselines and scoring path.
JUDGING = ("data", "encoders", "scoring", "decision", "model", "guard", "store", "bulk", "constants.py",
           "published.py", "io.py", "csv_files.py", "regular_files.py", "yaml_files.py", "eval/baselines.py",
           "eval/methods.py",
           "eval/run.py", "eval/benchmark/scorers.py")


def _sources(entry, name: str):
    """``(relative name, file)`` of every .py file at ``entry`` (a file, or a folder searched recursively)."""
    if entry.is_file():
        yield name, entry
        return
    for child in entry.iterdir():
        if child.is_dir() and child.name != "__pycache__":
            yield from _sources(child, f"{name}/{child.name}")
        elif child.is_file() and child.name.endswith(".py"):
            yield f"{name}/{child.name}", child


@functools.lru_cache(maxsize=None)
def code_identity() -> str:
    """This process's latentguard code: :func:`source_digest` of the imported package, computed once."""
    return source_digest(resources.files("latentguard"))


def source_digest(root) -> str:
    """``sha256:`` and 16 hex digits over the :data:`JUDGING` source files under ``root`` (a package folder;
    names and bytes, line ends as ``\\n``). A listed file or folder without source fails closed."""
    found = []
    for listed in JUDGING:
        entry = root.joinpath(*listed.split("/"))
        files = list(_sources(entry, listed)) if entry.is_file() or entry.is_dir() else []
        if not files:  # a sourceless install (.pyc only) would otherwise identify nothing
            raise LatentGuardError(f"latentguard's source {listed} is missing, so the code cannot be identified; "
                                   "reinstall latentguard with its .py files")
        found.extend(files)
    digest = hashlib.sha256()
    for name, entry in sorted(found, key=lambda item: item[0]):
        digest.update(name.encode("utf-8") + b"\0" + entry.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return "sha256:" + digest.hexdigest()[:16]
