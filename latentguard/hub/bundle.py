"""Opening a guard bundle: a local folder, or a hub repo fetched into the Hugging Face cache.

What ``from_pretrained(x)`` is given decides how it is read (:func:`open_bundle`):

* an existing directory is a bundle: it must hold a ``config.json`` of the bundle format;
* an existing file is a released-format checkpoint (``.pth``), read as before;
* a string shaped like a hub repo id (``org/name``: one slash, no path syntax, no checkpoint suffix)
  that is not an existing path is a hub repo, fetched with ``huggingface_hub.snapshot_download``, so
  ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``revision`` pins work as for
  any hub model;
* anything else is a checkpoint path (the bare ``model_parameters.pth`` downloads the released weights).

Nothing is trusted before it is checked: the config against its schema, the weights against the
SHA-256 the config records (and as safetensors, never a pickle), the encoder against the identity
the bundle was built for, the pre-encoded concept vectors against the encoder that is loaded.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from ..constants import AUTO, CALIBRATED
from ..errors import LatentGuardError
from ..io import sha256_of
from .format import BUNDLE_FILES, CONCEPTS, CONFIG, VECTORS, WEIGHTS, calibration_record, read_config

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def looks_like_repo_id(text: str) -> bool:
    """``org/name`` with no path syntax and no checkpoint suffix (``runs/x.pth`` is a file path)."""
    return bool(REPO_ID.fullmatch(text)) and not text.lower().endswith(CHECKPOINT_SUFFIXES) and ".." not in text


# Guards that ship inside the package, opened by a bare name. A bare name (no slash, no dot) is
# always the built-in guard: a local folder with the same name is given as a path (``./mini``).
BUILTIN_GUARDS = ("mini",)


def builtin_guard_path(name: str) -> Path:
    """The folder of built-in guard ``name`` inside the installed package."""
    return Path(__file__).resolve().parent.parent / "resources" / name


def open_bundle(source: Any, *, revision: str | None = None) -> "Bundle | None":
    """The bundle ``source`` names (a built-in name, a folder or a hub repo id), or None for a released-format
    checkpoint path."""
    if not isinstance(source, (str, Path)):
        raise LatentGuardError(f"expected a bundle folder, a hub repo id or a checkpoint path, got "
                               f"{type(source).__name__}")
    if isinstance(source, str) and not source.strip():  # "" had read the working directory as "."
        raise LatentGuardError("expected a bundle folder, a hub repo id, a built-in name or a checkpoint path, got ''")
    if isinstance(source, str) and source in BUILTIN_GUARDS:
        if revision is not None:
            raise LatentGuardError(f"revision={revision!r} applies to hub repo ids, not to the built-in guard "
                                   f"{source!r}")
        if Path(source).is_dir():  # a folder saved as "mini" is never what from_pretrained("mini") reads
            warnings.warn(f"{source!r} names the built-in guard; the folder ./{source} is not read (load it as "
                          f"'./{source}')", UserWarning, stacklevel=3)
        return Bundle(builtin_guard_path(source), builtin=source)
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise LatentGuardError(f"revision={revision!r} applies to hub repo ids, but {path} is a local folder")
        return Bundle(path)
    if not path.exists() and isinstance(source, str) and looks_like_repo_id(source):
        return Bundle(download_bundle(source, revision), repo_id=source, revision=revision)
    if revision is not None:
        raise LatentGuardError(f"revision={revision!r} applies to hub repo ids (org/name), not to {source}")
    near = [name for name in BUILTIN_GUARDS if isinstance(source, str) and source.strip().lower() == name]
    if near and not path.exists():  # "MINI", " mini": a built-in name mistyped, not a checkpoint to fetch
        raise LatentGuardError(f"{source!r} is not a folder; the built-in guard is named {near[0]!r}")
    return None


def download_bundle(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of hub repo ``repo_id`` (the Hugging Face cache; downloaded when missing)."""
    try:
        from huggingface_hub import constants, errors, snapshot_download
    except ImportError:
        raise LatentGuardError(f"loading '{repo_id}' from the hub needs huggingface_hub (pip install "
                               "huggingface_hub), or pass a local bundle folder") from None
    at = f" at revision {revision!r}" if revision else ""
    local = f"if '{repo_id}' is meant as a local folder, it does not exist here"
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(BUNDLE_FILES)))
    except errors.RevisionNotFoundError:
        raise LatentGuardError(f"hub repo {repo_id} has no revision {revision!r}; pass an existing branch, tag "
                               "or commit") from None
    except errors.RepositoryNotFoundError:  # gated and private repos too: the hub answers alike
        raise LatentGuardError(f"hub repo {repo_id} was not found, or it is private or gated and you are not "
                               f"logged in (`hf auth login` or HF_TOKEN); {local}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError, TimeoutError) as exc:
        offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else f"the hub ({constants.ENDPOINT}) " \
                  "cannot be reached"
        partial = " (the cached copy is incomplete)" if type(exc).__name__ == "IncompleteSnapshotError" else ""
        raise LatentGuardError(
            f"cannot load guard bundle {repo_id}{at}: {offline} and it is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}){partial}; download it once with network access (HF_HUB_OFFLINE unset), or "
            f"copy the bundle folder here and pass its path (from_pretrained('/path/to/folder'), "
            f"--guard /path/to/folder)") from None
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"cannot load guard bundle {repo_id}{at} from the hub: {first}") from None
    except ValueError as exc:  # an id the hub refuses (HFValidationError)
        raise LatentGuardError(f"'{repo_id}' is not a usable hub repo id ({exc}); {local}") from None


class Bundle:
    """A checked bundle folder: its config (read and validated at once) and lazy, checked file reads."""

    def __init__(self, directory: str | Path, *, repo_id: str | None = None, revision: str | None = None,
                 builtin: str | None = None) -> None:
        self.path = Path(directory)
        self.repo_id, self.revision, self.builtin = repo_id, revision, builtin
        if not (self.path / CONFIG).exists():  # one there but no regular file (a FIFO): read_config says so
            what = f"hub repo {repo_id}" if repo_id else f"{self.path} is a directory but"
            raise LatentGuardError(f"{what} not a Latent Guard bundle (no {CONFIG}); pass a bundle folder (written by "
                                   "guard.save_pretrained or `latentguard export`), a hub repo id or a .pth file")
        self.config = read_config(self.path / CONFIG)
        needed = [WEIGHTS, CONCEPTS] + ([VECTORS] if self.config["concept_vectors"] else [])
        missing = [name for name in needed if not (self.path / name).exists()]  # a FIFO is refused when read
        if missing:
            raise LatentGuardError(f"bundle {self.name} lacks {', '.join(missing)} (its {CONFIG} lists them); "
                                   "copy or download the whole bundle")

    @property
    def name(self) -> str:
        """How messages name it: the built-in name, the repo id (and revision) or the folder."""
        if self.builtin:
            return self.builtin
        if self.repo_id:
            return self.repo_id + (f"@{self.revision}" if self.revision else "")
        return str(self.path)

    @property
    def encoder(self) -> dict[str, Any]:
        """The ``encoder`` section: loadable ``name``, ``family``, ``revision``, ``identity``, ``options``."""
        return self.config["encoder"]

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def weights_sha256(self) -> str:
        return self.config["weights"]["sha256"]

    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the released-format checkpoint these weights were exported from, when recorded."""
        return self.config["weights"]["source_sha256"]

    # ------------------------------------------------------------------------------- weights
    def validate_weights(self) -> None:
        """Refuse a ``model.safetensors`` that is not safetensors (a pickle renamed) or not the recorded file."""
        from ..model.checkpoint import load_safetensors_file

        load_safetensors_file(self.weights_path)  # the format first: a pickle is named as such, never unpickled
        actual = sha256_of(self.weights_path)
        if actual != self.weights_sha256:
            raise LatentGuardError(
                f"{self.weights_path}: SHA-256 {actual[:12]}... differs from the {self.weights_sha256[:12]}... its "
                f"{CONFIG} records: the weights were changed or damaged; download or copy the bundle again")

    def mapping_layer(self, *, in_dim: int | None = None, device="cpu"):
        """The Embedding Mapping Layer, checked (format, SHA-256, recorded sizes) and loaded strictly."""
        from ..model import load_mapping_layer

        self.validate_weights()
        sizes = self.config["mapping_layer"]
        if in_dim is not None and in_dim != sizes["in_dim"]:
            raise LatentGuardError(f"bundle {self.name} expects encoder width {sizes['in_dim']}, but the encoder's "
                                   f"hidden size is {in_dim}; use the bundle's encoder ({self.encoder['name']})")
        model = load_mapping_layer(self.weights_path, in_dim=sizes["in_dim"], num_heads=sizes["num_heads"],
                                   device=device)
        model.mask_padding = bool(sizes["mask_padding"])
        from ..model.checkpoint import safetensors_metadata

        bound = safetensors_metadata(self.weights_path).get("mask_padding")  # absent: written before it was bound
        if bound is not None and bound != str(model.mask_padding).lower():
            raise LatentGuardError(f"{self.weights_path}: the weights were trained with mask_padding={bound}, but "
                                   f"{CONFIG} says {str(model.mask_padding).lower()}; the bundle was edited: "
                                   "restore its config.json or save the bundle again")
        found = {"in_dim": model.in_dim, "num_heads": model.num_heads, "head_dim": model.head_dim,
                 "out_dim": model.out_dim, "mask_padding": model.mask_padding}
        if found != sizes:
            raise LatentGuardError(f"{self.weights_path}: the weights have sizes {found}, but {CONFIG} records {sizes}")
        return model

    # -------------------------------------------------------------------------- blacklist
    def blacklist(self):
        """``concepts.yaml`` as a :class:`~latentguard.data.blacklist.Blacklist`, checked against ``config.json``."""
        from ..data.blacklist import load_blacklist

        path = self.path / CONCEPTS
        if sha256_of(path) != self.config["concepts"]["sha256"]:
            raise LatentGuardError(f"{path}: SHA-256 differs from the one {CONFIG} records (damaged or edited; its "
                                   f"threshold and evaluation belong to the list as saved); an edited list loads as "
                                   f"concepts='{path}' (--concepts), then save a new bundle")
        blacklist = load_blacklist(path)
        recorded = self.config["concepts"]["count"]
        if len(blacklist.concepts) != recorded:
            raise LatentGuardError(f"{path} holds {len(blacklist.concepts)} concepts, {CONFIG} records {recorded}: "
                                   f"damaged or edited; an edited list loads as concepts='{path}' (--concepts), "
                                   "then save a new bundle")
        names = self.config["categories"]["names"]
        if list(blacklist.categories) != names:
            raise LatentGuardError(f"{path} has the groups {list(blacklist.categories)}, {CONFIG} records the "
                                   f"categories {names}; an edited list loads as concepts='{path}' (--concepts)")
        unknown = sorted(set(self.config["concept_thresholds"]) - set(blacklist.concepts))
        if unknown:
            raise LatentGuardError(f"{self.path / CONFIG}: concept_thresholds names concept(s) not in {CONCEPTS}: "
                                   f"{', '.join(unknown)}")
        return blacklist

    def own_thresholds(self, names) -> dict[str, float]:
        """The per-concept thresholds ``config.json`` records for the concepts ``names``; warns once when one is
        above the calibrated threshold (:meth:`raised_thresholds`)."""
        keep = set(names)
        own = {c: t for c, t in self.config["concept_thresholds"].items() if c in keep}
        reason = self.raised_thresholds(own)
        if reason is not None:
            warnings.warn(reason, stacklevel=5)  # from_pretrained's caller
        return own

    def raised_thresholds(self, own: dict[str, float]) -> str | None:
        """Why this bundle flags fewer prompts than its calibration record says, or None.

        The record (``threshold.calibration``) measured its FPR/TPR at one threshold; ``threshold.value`` must equal
        it (:func:`latentguard.hub.format.validate_config` refuses another), but a per-concept threshold (``own``)
        raised by hand above it makes that concept fire less often than calibrated, silently. Lower ones are
        stricter: fine."""
        record = calibration_record(self.config, self.path / CONFIG)
        if record is None:
            return None
        given = {"threshold.value": float(self.config["threshold"]["value"]),
                 **{f"concept_thresholds['{c}']": float(t) for c, t in own.items()}}
        above = {where: t for where, t in given.items() if t > record.threshold}
        if not above:
            return None
        measured = ", ".join(f"{name} {value:.3f}" for name, value in (("FPR", record.fpr), ("TPR", record.tpr))
                             if value is not None) or "no rates"
        listed = ", ".join(f"{where} {t:g}" for where, t in above.items())
        return (f"{self.path / CONFIG}: {listed} above the calibrated threshold {record.threshold:g} (its record: "
                f"{measured} on {record.n_safe} safe / {record.n_unsafe} unsafe prompts, {record.method}); this guard "
                f"flags fewer prompts than calibrated: restore the calibrated value or recalibrate and save the bundle")

    def fitted_slope(self, choice) -> float | None:
        """The probability slope for a guard whose threshold is ``choice``: the bundle's, fitted with the bundle's own
        threshold; another threshold gets the default (``None``)."""
        return self.config["slope"] if choice.record_path == self.path / CONFIG else None

    def concept_vectors(self, encoder_identity: str) -> dict | None:
        """``{concept: vector}`` pre-encoded by the bundle's encoder, when ``encoder_identity`` embeds exactly
        alike (the name may differ, not the weights, options or precision); None otherwise or when absent."""
        from ..encoders.identity import same_embeddings

        spec = self.config["concept_vectors"]
        if spec is None or same_embeddings(spec["encoder_identity"], encoder_identity) is not True:
            return None
        from ..model.checkpoint import load_safetensors_file

        path = self.path / VECTORS
        tensors = load_safetensors_file(path)
        if sha256_of(path) != spec["sha256"]:
            raise LatentGuardError(f"{path}: SHA-256 differs from the one {CONFIG} records; download or copy the "
                                   "bundle again")
        from ..model.checkpoint import safetensors_metadata

        metadata = safetensors_metadata(path)
        try:
            concepts = json.loads(metadata.get("concepts", "null"))
        except ValueError:
            concepts = None
        vectors = tensors.get("vectors")
        if (not isinstance(concepts, list) or vectors is None or vectors.dim() != 2
                or vectors.shape[0] != len(concepts) or vectors.shape[1] != self.config["mapping_layer"]["in_dim"]):
            raise LatentGuardError(f"{path}: expected a 'vectors' tensor [concepts, width] and the concept list in its "
                                   "metadata; save the bundle again")
        return dict(zip(concepts, vectors.float()))

    # ------------------------------------------------------------------- encoder, threshold
    def validate_encoder(self, identity: str) -> None:
        """Refuse an encoder that embeds differently from the bundle's; warn when only the precision differs."""
        from ..encoders.identity import identity_parts, same_embeddings

        recorded = self.encoder["identity"]
        same = same_embeddings(recorded, identity)
        if same is False:
            raise LatentGuardError(
                f"bundle {self.name} was built for encoder {recorded}, but the encoder given is {identity}; its "
                f"scores would be meaningless: load the bundle's encoder ({self.encoder['name']}) or a bundle "
                "trained for yours")
        if same is None:
            warnings.warn(f"bundle {self.name} was built with the encoder in "
                          f"{identity_parts(recorded)['precision']}, it now runs in "
                          f"{identity_parts(identity)['precision']}; scores may shift slightly", stacklevel=3)

    def threshold_choice(self, value: float | int | str):
        """The threshold a guard from this bundle uses: ``auto``/``calibrated`` read the bundle's record
        (``calibrated`` only when it is a calibration), a number or a published name is taken as given."""
        from ..decision.threshold import ThresholdChoice, choose_threshold

        key = value.strip().lower() if isinstance(value, str) else None
        if key not in (AUTO, CALIBRATED):
            return choose_threshold(value)
        recorded = self.config["threshold"]
        if recorded is None:
            raise LatentGuardError(f"bundle {self.name} records no threshold; pass threshold=NUMBER|released|paper "
                                   "(--threshold), or calibrate (guard.calibrate) and save the bundle again")
        record = calibration_record(self.config, self.path / CONFIG)
        if key == CALIBRATED and record is None:
            raise LatentGuardError(f"threshold 'calibrated': bundle {self.name}'s threshold {recorded['value']} is "
                                   f"{recorded['origin']}, not a calibration record; use 'auto' or a number")
        if record is None and "calibrat" in str(recorded["origin"]):  # a record removed, the value maybe raised
            warnings.warn(f"{self.path / CONFIG}: threshold {recorded['value']:g} says it was calibrated "
                          f"({recorded['origin']}) but its calibration record is missing, so what it flags is "
                          "unmeasured; calibrate (guard.calibrate) and save the bundle, or pass a threshold",
                          UserWarning, stacklevel=4)
        return ThresholdChoice(recorded["value"], self.threshold_origin, record, self.path / CONFIG)

    @property
    def threshold_origin(self) -> str:
        """How the bundle's threshold was chosen, and where it was read (a guard's ``threshold_origin``)."""
        recorded = self.config["threshold"]
        return f"{recorded['origin'] if recorded else 'none'}, bundle {self.name}"
