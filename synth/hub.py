"""Push a finished run to the Hugging Face Hub as a dataset repo: data files and the card.

The run is exported (synth.export: the format, splits and README.md card) into a temporary
folder, which `huggingface_hub` uploads in one commit (Parquet through Git LFS, as the Hub asks).
The token comes only from the environment (HF_TOKEN, or the login that `hf auth login` saved):
it is never a parameter in a pipeline file, and never written to a log, card or output. Set
HF_ENDPOINT to push to another Hub deployment.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .config import PushSettings
from .errors import InputError, MissingDependency, SynthError

__all__ = ["PushSettings", "push_run"]


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise MissingDependency("huggingface_hub", "hub", "Pushing to the Hub") from None
    return huggingface_hub


def push_run(run_dir: str | Path, settings: PushSettings) -> str:
    """Export the run and upload it to `settings.repo_id`; returns the commit URL."""
    hub = _hub()
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from .export import export_run

    token = hub.get_token()  # HF_TOKEN, else the login `hf auth login` saved
    if not token:
        raise InputError(
            "no Hugging Face token: set HF_TOKEN in the environment (or run 'hf auth login'); "
            "synth never reads tokens from pipeline files"
        )
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="synth-push-") as tmp:
        export_run(
            run_dir,
            tmp,
            settings.format,
            test_size=settings.test_size,
            seed=settings.seed,
            license=settings.license,
        )
        try:
            api.create_repo(settings.repo_id, repo_type="dataset", private=settings.private, exist_ok=True)
            commit = api.upload_folder(
                folder_path=tmp,
                repo_id=settings.repo_id,
                repo_type="dataset",
                commit_message=f"synth: {settings.format} data from {Path(run_dir).name}",
            )
        except ValueError as exc:  # the Hub refused the card's metadata block
            raise SynthError(f"the Hub refused the dataset card: {exc}") from None
        except OfflineModeIsEnabled:
            raise SynthError(
                "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, which forbids reaching the Hub: unset it to push"
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = {
                401: "the token in HF_TOKEN is not valid",
                403: "the token cannot write to this repo (a write token, and a namespace you belong to?)",
            }.get(status, "see the Hub's message")
            message = str(exc).replace(token, "***").splitlines()[0]
            raise SynthError(
                f"pushing to {settings.repo_id} failed (HTTP {status}: {hint}): {message}; the run is complete: "
                f"run 'synth push {run_dir} {settings.repo_id}' to try again"
            ) from None
    return str(getattr(commit, "commit_url", commit))
