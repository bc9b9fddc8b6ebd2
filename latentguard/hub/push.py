"""Publishing a bundle on the Hugging Face hub with ``huggingface_hub`` (``HF_TOKEN``/``hf auth login``,
``HF_ENDPOINT`` as for any upload); no credentials, no network or a refused token is one line."""
from __future__ import annotations

from pathlib import Path

from ..errors import LatentGuardError
from .format import BUNDLE_FILES


def hub_token(repo_id: str, token: str | None = None) -> str:
    """The token an upload to ``repo_id`` will use, or a one-line refusal before anything is written or sent."""
    try:
        from huggingface_hub import constants, get_token
    except ImportError:
        raise LatentGuardError("publishing on the hub needs huggingface_hub (pip install huggingface_hub)") from None
    if constants.HF_HUB_OFFLINE:
        raise LatentGuardError(f"cannot push to hub repo {repo_id}: HF_HUB_OFFLINE=1 is set; unset it to upload "
                               "(nothing was uploaded)")
    token = token or get_token()
    if not token:
        raise LatentGuardError(f"pushing to hub repo {repo_id} needs Hugging Face credentials: run `hf auth login` or "
                               "set HF_TOKEN to a token with write access (nothing was uploaded)")
    return token


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload the bundle in ``folder`` to hub repo ``repo_id`` (created when missing); returns the commit's URL.

    The folder is opened and its weights checked first, so a bundle that would not load is never published.
    Only the bundle's own files are uploaded.
    """
    from .bundle import Bundle

    token = hub_token(repo_id, token)
    bundle = Bundle(folder)
    bundle.validate_weights()
    from huggingface_hub import HfApi, errors

    api = HfApi(token=token)
    message = commit_message or f"Latent Guard bundle ({bundle.encoder['family']} encoder, " \
                                f"{bundle.config['concepts']['count']} concepts)"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=list(BUNDLE_FILES),
                                 commit_message=message)
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "; check that the token may write to it (`hf auth whoami`)" if status in (401, 403) else ""
        raise LatentGuardError(f"cannot push to hub repo {repo_id}: {first}{hint}") from None
    except Exception as exc:  # noqa: BLE001 - transport errors of whichever HTTP client huggingface_hub uses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LatentGuardError(f"cannot push to hub repo {repo_id}: {type(exc).__name__} {first}".rstrip()) from None
    return str(getattr(info, "commit_url", info))
