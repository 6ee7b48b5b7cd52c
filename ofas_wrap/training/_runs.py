"""Run folders: the files a recipe writes into ``--output`` (``args.json``, ``data.json``, ``metrics.json``,
``checkpoints/``), reading a finished run back, and the data settings a run inherits from its ``--init`` run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from .._atomic import write_atomic
from ._errors import RunError

__all__ = ["read_run", "latest_checkpoint", "DATA_KEYS"]

ARGS_NAME = "args.json"
DATA_NAME = "data.json"
METRICS_NAME = "metrics.json"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
DATA_KEYS = ("dataset", "dataset_config", "in_chans", "val_size", "split_seed", "image_size", "train_split",
             "test_split", "image_column", "label_column", "val_from")
DATA_DEFAULTS = {"in_chans": "auto", "val_size": 0.1, "split_seed": 0, "train_split": "train", "val_from": "train"}


# --------------------------------------------------------------------------------------------- run dirs
def read_run(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``args.json`` / ``data.json`` / ``metrics.json`` of a run folder (those that exist) and its path.

    Raises :class:`RunError` when ``path`` is not a folder holding a saved model (``config.json``).
    """
    run = Path(path)
    if not run.is_dir():
        raise RunError(f"run folder {run} does not exist")
    if not (run / "config.json").is_file():
        raise RunError(f"{run} holds no saved model (config.json); give a run folder written by a recipe or "
                       "by save_pretrained")
    out: dict[str, Any] = {"path": run}
    for key, name in (("args", ARGS_NAME), ("data", DATA_NAME), ("metrics", METRICS_NAME)):
        if (run / name).is_file():
            out[key] = json.loads((run / name).read_text())
    return out


def latest_checkpoint(run: Union[str, os.PathLike]) -> Optional[Path]:
    """The newest checkpoint of a run folder: the one ``checkpoints/LATEST`` names (written after the step folder,
    atomically), else the last ``checkpoints/step-*`` folder; None when there is none."""
    root = Path(run) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir():
            return candidate
    found = sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []
    return found[-1] if found else None


def _write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fill_data_args(args: argparse.Namespace, init_args: Optional[dict[str, Any]]) -> None:
    for key in DATA_KEYS:
        if getattr(args, key, None) is None and init_args is not None and init_args.get(key) is not None:
            setattr(args, key, init_args[key])
    for key, value in DATA_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _check_replaceable(run_dir: Path, args: argparse.Namespace) -> None:
    """``--overwrite`` replaces only a run folder of ours that is not an input of this run."""
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise RunError(f"--overwrite: {run_dir} is not a folder (or is a link); refusing to replace it")
    real = run_dir.resolve()
    for flag in ("dataset", "init"):
        value = getattr(args, flag, None)
        if value and Path(value).exists():
            source = Path(value).resolve()
            if source == real or real in source.parents or source in real.parents:
                raise RunError(f"--overwrite: --output {run_dir} holds or is inside --{flag} {value}; refusing to "
                               "delete an input of this run; choose another --output")
    if any(run_dir.iterdir()) and not ((run_dir / ARGS_NAME).is_file() or (run_dir / CHECKPOINTS).is_dir()):
        raise RunError(f"--overwrite: {run_dir} is not a run folder of ofas-wrap (no {ARGS_NAME}, no {CHECKPOINTS}/); "
                       "refusing to delete it; choose another --output or empty it yourself")
