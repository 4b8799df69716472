"""Crash-safe checkpoint files and the checks that make a bad ``--ckpt_path`` a one-line error."""

import os
import pickle
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_dqn.checks import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it into place.

    A rename within a directory is atomic, so a process killed at any moment (even ``kill -9``)
    leaves either the previous complete checkpoint or the new complete one, never a truncated file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh name opened exclusively ("x"), rather than tempfile.mkstemp: mkstemp makes the file
        # private (0600), while a checkpoint should get the umask's permissions like any saved file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "xb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU, turning a missing or unreadable file into a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} does not exist (give a .ckpt file, or 'last' to resume the latest run)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: not for a file this broken
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a readable checkpoint: not a file torch.save wrote, or it holds "
            "objects other than tensors and plain containers"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"ckpt_path={str(path)!r} is not a readable checkpoint: {first_line}") from None


def check_checkpoint_fits(checkpoint: dict[str, Any], model: torch.nn.Module, path: str | Path) -> None:
    """Fail with the mismatching shapes when a checkpoint was trained on another env or network."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"ckpt_path={str(path)!r} is not a lit_dqn checkpoint: it has no state_dict")
    expected = model.state_dict()
    mismatches = [
        f"{name} {tuple(state[name].shape)} in the checkpoint vs {tuple(tensor.shape)} now"
        for name, tensor in expected.items()
        if name in state and tuple(state[name].shape) != tuple(tensor.shape)
    ]
    missing = [name for name in expected if name not in state]
    if mismatches or missing:
        hp = checkpoint.get("hyper_parameters", {})
        trained = (
            f"obs_dim={hp.get('obs_dim')}, n_actions={hp.get('n_actions')}, hidden_sizes={hp.get('hidden_sizes')}, "
            f"dueling={hp.get('dueling', False)}"
        )
        detail = "; ".join(mismatches[:2]) or f"missing {', '.join(missing[:2])}"
        raise ConfigError(
            f"ckpt_path={str(path)!r} does not fit this model: it was trained with {trained}, the config gives "
            f"obs_dim={model.hparams.obs_dim}, n_actions={model.hparams.n_actions}, "
            f"hidden_sizes={model.hparams.hidden_sizes}, dueling={model.hparams.dueling} ({detail})"
        )


def report_changed_hyperparameters(
    checkpoint: dict[str, Any], model: L.LightningModule, datamodule: L.LightningDataModule | None, path: str | Path
) -> None:
    """Say which model and data values a resumed fit takes from the config rather than the
    checkpoint, so a resume without the run's ``--config`` does not silently fall back to the class
    defaults: another learning rate, or another env (``data.env_kwargs``) beside the old one's replay."""
    sections = [
        ("model", checkpoint.get("hyper_parameters", {}), dict(model.hparams)),
        (
            "data",
            checkpoint.get("datamodule_hyper_parameters", {}),
            dict(datamodule.hparams) if datamodule is not None else {},
        ),
    ]

    def same(a: object, b: object) -> bool:
        containers = (list, tuple, dict)
        if a is None or b is None:  # no env_kwargs or wrappers is an empty dict or list: the same run
            return a == b or (isinstance(a or b, containers) and not (a or b))
        sequences = (list, tuple)  # a config gives tuples where a checkpoint has lists
        return list(a) == list(b) if isinstance(a, sequences) and isinstance(b, sequences) else a == b

    changed = [
        f"{section}.{key}={config[key]!r} (checkpoint: {saved[key]!r})"
        for section, saved, config in sections
        for key in config
        if not key.startswith("_") and key in saved and not same(saved[key], config[key])
    ]
    if changed:
        run_config = Path(path).parent.parent / "config.yaml"
        hint = f"; pass --config {run_config} to resume with the run's own settings" if run_config.is_file() else ""
        print(f"Resuming with values that differ from the checkpoint's: {', '.join(changed)}{hint}", file=sys.stderr)


def latest_last_checkpoint(log_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The most recently written readable ``last.ckpt`` under ``log_root`` (``version_*/checkpoints/``
    or ``checkpoints/``)
    and its contents. A newer one that cannot be read (cut short by a full disk, say) is skipped,
    with one line saying so."""
    # checkpoints/ directly under the root: a run without a logger (``trainer.logger: false``)
    found = [*log_root.glob("version_*/checkpoints/last.ckpt"), *log_root.glob("checkpoints/last.ckpt")]
    candidates = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except ConfigError as error:
            print(f"Skipping {path}: {error}", file=sys.stderr)
    return None


def checkpoint_in(path: Path) -> Path:
    """The file ``--ckpt_path`` names: a file as it is; for a directory (a run, or its ``checkpoints/``)
    its ``last.ckpt``, else its newest ``.ckpt``; a directory with none is one line."""
    if not path.is_dir():
        return path
    for folder in (path, path / "checkpoints"):
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
    found = [*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")]
    if not found:
        raise ConfigError(
            f"ckpt_path={str(path)!r} is a directory with no .ckpt file in it or in its checkpoints/: "
            "give a checkpoint file, a run directory, or 'last'"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
