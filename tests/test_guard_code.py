"""The code's identity (latentguard/guard/code.py): one digest per process, the same for a checkout and an
installed copy, changed by any edit of a file that judges and by no other."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentguard.errors import LatentGuardError
from latentguard.guard.code import JUDGING, code_identity, source_digest

PACKAGE = Path(__file__).resolve().parent.parent / "latentguard"


def test_the_digest_is_computed_once_and_is_the_trees():
    assert code_identity() is code_identity()  # cached: a run compares against one value
    assert code_identity() == source_digest(PACKAGE) and code_identity().startswith("sha256:")
    assert all((PACKAGE / name).exists() for name in JUDGING)


def test_an_installed_copy_has_the_same_digest_and_any_judging_edit_changes_it(tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "latentguard", ignore=shutil.ignore_patterns("__pycache__", "resources"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import latentguard.guard.code as c; "
             "print(c.__file__); print(c.code_identity())")
    where, digest = subprocess.run([sys.executable, "-c", probe, str(site)], env=env, capture_output=True,
                                   text=True, check=True).stdout.split()
    assert Path(where).is_relative_to(site) and digest == code_identity()
    copy = site / "latentguard"
    (copy / "cli" / "score.py").write_text("# a change that judges nothing\n", encoding="utf-8")
    assert source_digest(copy) == code_identity()
    sanitize = copy / "guard" / "sanitize.py"
    sanitize.write_text(sanitize.read_text(encoding="utf-8").replace("DEFAULT_WIDTH = 3", "DEFAULT_WIDTH = 4"),
                        encoding="utf-8")
    assert source_digest(copy) != code_identity()


def test_a_tree_without_a_judging_source_fails_closed(tmp_path):
    copy = tmp_path / "latentguard"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "resources"))
    for source in (copy / "scoring").glob("*.py"):  # as a sourceless (.pyc only) install leaves it
        source.unlink()
    with pytest.raises(LatentGuardError, match="source scoring is missing"):
        source_digest(copy)
