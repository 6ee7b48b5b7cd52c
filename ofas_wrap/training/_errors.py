"""The training code's errors, and the exit codes a recipe's entry point turns them into (:func:`main_guard`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..data import DataError

__all__ = ["RunError", "NonFiniteLossError", "TrainingInterrupted", "main_guard"]


class RunError(ValueError):
    """A recipe cannot start: a bad flag, an existing output folder, nothing to resume, a bad ``--init`` run."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the bad step changed the weights."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM or ``--stop-at-step``: the run saved a checkpoint and stopped; ``--resume`` continues it."""



def main_guard(run: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a recipe's main function and turn the expected failures into a clear message and an exit code.

    2: bad flags, data or run folder (nothing was written); 3: a NaN/inf loss; 130: interrupted (checkpoint saved).
    """
    from .._hub import CheckpointError
    from ..models import WeightsError

    finished = False
    try:
        run(argv)
        finished = True
    except (RunError, DataError, FileNotFoundError, CheckpointError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    finally:
        _end_process_group(barrier=finished)
    return 0


def _end_process_group(barrier: bool = True) -> None:
    """Destroy the process group a multi-process launch opened (after a last barrier unless ``barrier=False``, the
    failure path, where a rank may never reach it); nothing in a single process.

    A recipe's last step, as Accelerate's ``end_training`` is a script's: left to interpreter exit, one rank tearing
    down its gloo pairs while the other still holds them could abort that rank (SIGABRT) after the work was done.
    """
    distributed = getattr(sys.modules.get("torch"), "distributed", None)
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    try:
        if barrier:
            distributed.barrier()
    finally:
        distributed.destroy_process_group()
