"""The open recipe's run folder: what a finished run recorded, and when a run may take it as its own.

A finished run leaves ``recipe_record.json`` (written last, after its bundle). A run in the same folder
is the same run only when the record names the same inputs (data files, blacklist, encoder: their
SHA-256) and the same settings the weights depend on: then its bundle is kept. Any other run is refused
before it trains, as a resume on other inputs is (:func:`latentguard.train.recipe._resume_state`):
without that, a run whose ``resume.pt`` was deleted trained anew on the new settings and then kept the
old bundle, because the old record read as finished.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LatentGuardError

# The config sections a run's weights and bundle depend on (others, like serve or bulk, may differ).
TRAINED = ("encoder", "model", "store", "train", "recipe")


def trained_settings(cfg) -> dict:
    """The sections of ``cfg`` in :data:`TRAINED`, as the record stores them (JSON values)."""
    values = cfg.to_dict()
    return json.loads(json.dumps({key: values[key] for key in TRAINED}, default=str))


def changed_settings(before: dict, now: dict) -> list[str]:
    """The :data:`TRAINED` sections that differ between two runs' settings (what a run's weights depend on)."""
    return [key for key in TRAINED if before.get(key) != now.get(key)]


def input_difference(saved: dict, inputs: dict[str, dict[str, str]]) -> str | None:
    """How ``inputs`` differ from those recorded as ``saved`` (``None``: they do not), for a refusal."""
    for key in sorted(set(saved) | set(inputs)):
        before, now = saved.get(key), inputs.get(key)
        if before == now:
            continue
        if key == "encoder":
            return f"the encoder differs (store {(before or {}).get('store')} -> {(now or {}).get('store')})"
        if before is None or now is None:
            return f"{key} {'was not' if before is None else 'is no longer'} an input"
        was = before.get("file") if isinstance(before, dict) else before
        if was != now["file"]:
            return f"{key} is {now['file']}, the run began on {was}"
        return f"{now['file']} ({key}) changed (SHA-256 {str(before.get('sha256'))[:12]}... -> {now['sha256'][:12]}...)"
    return None


def refuse_other_settings(path: Path, state: dict | None, settings: dict) -> None:
    """Refuse to continue ``path`` (a resume state) with other settings than it was trained with (a longer run,
    ``recipe.steps``, is not another run). With config.yaml deleted, a resume on another lr or seed had been
    accepted and recorded the new values for weights trained partly on the old (a thirty-third hostile pass)."""
    before = None if state is None else state.get("settings")
    if not isinstance(before, dict):  # a new run, or a state an older latentguard wrote
        return

    def longer(values: dict) -> dict:  # the settings but recipe.steps
        return {**values, "recipe": {**(values.get("recipe") or {}), "steps": None}}

    changed = changed_settings(longer(before), longer(settings))
    if changed:
        raise LatentGuardError(f"{path.parent} holds a run trained with other {', '.join(changed)} settings ({path}); "
                               "its weights are not continued with other settings: restore them to resume, or train "
                               "into a new --output-dir")


def refuse_other_finished_run(path: Path, inputs: dict[str, dict[str, str]], settings: dict) -> dict | None:
    """The record of the finished run in ``path.parent`` (``None``: none); refused in one line, before anything
    is trained, when it was trained on other inputs or settings than this run's."""
    record = finished_record(path)
    if record is None:
        return None
    how = ("its bundle and record are kept: train into a new --output-dir, or restore the files and settings the "
           "run was trained on")
    saved = record.get("inputs")
    if isinstance(saved, dict):
        what = input_difference(saved, inputs)
        if what is not None:
            raise LatentGuardError(f"{path.parent} holds a run finished on other inputs ({path}): {what}; {how}")
    before = record.get("settings")
    if isinstance(before, dict):
        changed = changed_settings(before, settings)
        if changed:
            raise LatentGuardError(f"{path.parent} holds a run finished with other {', '.join(changed)} settings "
                                   f"({path}); {how}")
    if not isinstance(saved, dict) or not isinstance(before, dict):  # an older latentguard wrote it
        print(f"note: {path} records no {'inputs' if not isinstance(saved, dict) else 'settings'}: only the run's "
              "config.yaml is checked against this run", flush=True)
    return record


def finished_record(path: Path) -> dict | None:
    """The run's record (``None``: not written yet, the run is unfinished); one written by this recipe and
    then damaged is refused in one line, never taken as finished nor silently replaced."""
    if not path.is_file():
        return None
    from ..io import strict_json

    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise LatentGuardError(f"{path}: the run's record cannot be read ({exc}); delete it to have the run's "
                               "bundle and record written again") from None
    how = "delete it to have the run's bundle and record written again (the weights are in resume.pt)"
    try:
        record = strict_json(text, str(path))
    except LatentGuardError as exc:
        raise LatentGuardError(f"{exc}; {how}") from None
    if not isinstance(record, dict) or not isinstance(record.get("steps"), int) \
            or not isinstance(record.get("threshold"), (int, float)) or isinstance(record.get("threshold"), bool):
        raise LatentGuardError(f"{path}: not a record written by main.py (it needs an integer 'steps' and a number "
                               f"'threshold'); {how}")
    return record


def complete_bundle(bundle: Path) -> bool:
    """Whether ``bundle`` holds a bundle whose ``config.json`` reads as one (written last, so it is complete)."""
    from ..hub.format import CONFIG, read_config

    if not (bundle / CONFIG).is_file():
        return False
    try:
        read_config(bundle / CONFIG)
    except LatentGuardError:
        return False
    return True


def clear_unfinished_bundle(bundle: Path) -> None:
    """Remove the files of a bundle this run began and did not finish (no valid ``config.json``), so that it is
    written again; a file no bundle writer makes stays, and the folder is then refused, naming it."""
    from ..hub.format import CARD, CONCEPTS, CONFIG, VECTORS, WEIGHTS
    from ..protected import input_at

    if bundle.is_symlink():
        raise LatentGuardError(f"{bundle} is a symbolic link; main.py never writes through one (remove the link, then "
                               "run the same command again)")
    if not bundle.is_dir() or complete_bundle(bundle):
        return  # a complete bundle is replaced by save_pretrained(overwrite=True) itself
    ours = {CONFIG, WEIGHTS, CONCEPTS, CARD, VECTORS}
    entries = list(bundle.iterdir())
    # atomic_path leaves .NAME.XXXX.tmp behind a kill -9
    foreign = [p.name for p in entries if not p.is_file() or p.is_symlink() or input_at(p) is not None or not (
        p.name in ours or (p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in ours)))]
    if foreign:
        raise LatentGuardError(f"{bundle} holds an unfinished bundle and {sorted(foreign)[0]}, which main.py did not "
                               "write; move that file out of the folder, then run the same command again")
    for path in entries:
        path.unlink()
    print(f"note: {bundle} was left unfinished (no valid {CONFIG}); writing it again", flush=True)
