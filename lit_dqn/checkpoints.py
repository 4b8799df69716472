"""Crash-safe checkpoint files and the checks that make a bad ``--ckpt_path`` a one-line error."""

import os
import pickle
import re
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
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # UnpicklingError: torch's own message suggests weights_only=False, not for a file this broken; a text
    # file (a config given by mistake) reaches the unpickler as opcodes: IndexError, KeyError
    except (pickle.UnpicklingError, IndexError, KeyError):
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a readable checkpoint: not a file torch.save wrote, or it holds "
            "objects other than tensors and plain containers"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"ckpt_path={str(path)!r} is not a readable checkpoint: {first_line}") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"ckpt_path={str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


# The model values that build the network: a checkpoint's weights fit only a network built alike.
# C51's atoms (v_min, v_max) are a buffer of the same shape whatever the range: the state dict would
# load, and the net would go on with the checkpoint's atoms while the config and hparams say others.
NETWORK_KEYS = (
    "obs_dim", "n_actions", "hidden_sizes", "dueling",
    "distributional", "num_atoms", "v_min", "v_max", "num_quantiles", "noisy",
)  # fmt: skip


def same_value(a: object, b: object) -> bool:
    """Config and checkpoint values equal as a run uses them: a config gives tuples where a
    checkpoint has lists, and no env_kwargs or wrappers (None) is an empty dict or list."""
    containers = (list, tuple, dict)
    if a is None or b is None:
        return a == b or (isinstance(a or b, containers) and not (a or b))
    sequences = (list, tuple)
    return list(a) == list(b) if isinstance(a, sequences) and isinstance(b, sequences) else a == b


def check_checkpoint_fits(checkpoint: dict[str, Any], model: torch.nn.Module, path: str | Path) -> None:
    """Fail, naming the values that differ, when a checkpoint was trained on another env or network."""
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
    hp, now = checkpoint.get("hyper_parameters", {}), dict(model.hparams)
    differ = [key for key in NETWORK_KEYS if key in hp and key in now and not same_value(hp[key], now[key])]
    atoms = now.get("distributional") == "c51" and ({"v_min", "v_max"} & set(differ))
    # Another head can have the same shapes (1 quantile, or as many quantiles as C51's atoms): its
    # weights would be read as another kind of Q-value
    head = "distributional" in differ
    if mismatches or missing or atoms or head:
        keys = differ or ["obs_dim", "n_actions", "hidden_sizes", "dueling"]
        detail = (
            "; ".join(mismatches[:2])
            or (f"missing {', '.join(missing[:2])}" if missing else "")
            or ("another kind of Q-value" if head else "C51's atoms")
        )
        raise ConfigError(
            f"ckpt_path={str(path)!r} does not fit this model: it was trained with "
            f"{', '.join(f'{key}={hp.get(key)!r}' for key in keys)}, the config gives "
            f"{', '.join(f'{key}={now.get(key)!r}' for key in keys)} ({detail})"
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

    changed = [
        f"{section}.{key}={config[key]!r} (checkpoint: {saved[key]!r})"
        for section, saved, config in sections
        for key in config
        if not key.startswith("_") and key in saved and not same_value(saved[key], config[key])
    ]
    if changed:
        run_config = Path(path).parent.parent / "config.yaml"
        hint = f"; pass --config {run_config} to resume with the run's own settings" if run_config.is_file() else ""
        print(f"Resuming with values that differ from the checkpoint's: {', '.join(changed)}{hint}", file=sys.stderr)


LAST_FILES = re.compile(r"last(-v\d+)?\.ckpt")  # last.ckpt, or Lightning's last-vN.ckpt beside an earlier run's


def last_files(folder: Path) -> list[Path]:
    """The last checkpoints in ``folder`` (``LAST_FILES``), not a user's ``last-...`` or ``lastbest`` ones."""
    return [path for path in folder.glob("last*.ckpt") if LAST_FILES.fullmatch(path.name)]


def latest_last_checkpoint(log_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The most recently written readable ``last.ckpt`` (or ``last-vN.ckpt``) under ``log_root``
    (``version_*/checkpoints/`` or ``checkpoints/``) and its contents. A newer one that cannot be
    read (cut short by a full disk, say) is skipped, with one line saying so."""
    # checkpoints/ directly under the root: runs without a logger (``trainer.logger: false``), which
    # share it, so Lightning names a later run's last-v1.ckpt, last-v2.ckpt, ...
    folders = [*log_root.glob("version_*/checkpoints"), log_root / "checkpoints"]
    found = [path for folder in folders for path in last_files(folder)]
    candidates = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except ConfigError as error:
            print(f"Skipping {path}: {error}", file=sys.stderr)
    return None


def checkpoint_in(path: Path) -> Path:
    """The file ``--ckpt_path`` names: a file as it is; for a directory (a run, or its ``checkpoints/``)
    its newest ``last.ckpt`` / ``last-vN.ckpt``, else its newest ``.ckpt``; a directory with none is one line."""
    if not path.is_dir():
        return path
    for folder in (path, path / "checkpoints"):
        lasts = last_files(folder)
        if lasts:
            return max(lasts, key=lambda p: p.stat().st_mtime)
    found = [*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")]
    if not found:
        raise ConfigError(
            f"ckpt_path={str(path)!r} is a directory with no .ckpt file in it or in its checkpoints/: "
            "give a checkpoint file, a run directory, or 'last'"
        )
    return max(found, key=lambda p: p.stat().st_mtime)
