"""Training OFAS models: the code of the recipes, for the ``[train]`` extra (``pip install "ofas-wrap[train]"``).

The core of ofas-wrap (``adaptify``, the model, save/load, export, bench) never imports this package; the recipes
(``recipes/*.py``, ``python -m ofas_wrap.recipes.NAME``) and the benchmarks do. Each concern is a small module,
re-exported here:

- ``_flags``: :func:`build_parser`, the flags every recipe shares; ``_schedule``: :class:`LRSchedule`;
- ``_runs``: run folders (:func:`read_run`, the data settings a run inherits from its ``--init`` run);
- ``_trainer``: :class:`Trainer`, the Accelerate loop, checkpoints and signals; ``_errors``: the errors and
  :func:`main_guard`'s exit codes;
- ``_phases``: the phases as functions (:func:`train_backbone`, :func:`e2e_finetune`, :func:`rl_finetune`);
- ``_evaluate``: :func:`evaluate_classifier` and the threshold sweep (:func:`evaluate_run`);
- ``_speed`` (mixed precision, channels_last, compile, stochastic depth), ``_objectives`` (the issue-10 terms),
  ``_controls`` (the static controls), and :mod:`ofas_wrap.training.rl` (Eq. 5-10, public as ``ofas_wrap.rl``).

Example:
    >>> from ofas_wrap import training
    >>> args = training.e2e_parser().parse_args(["--init", "runs/base", "--output", "runs/e2e"])
    >>> args.phase
    'e2e_finetune'
"""

from . import rl
from ._controls import (
    accuracy_under_patterns,
    control_rows,
    greedy_fixed_subset,
    greedy_path,
    predictions_under_patterns,
    random_rate_patterns,
    shuffled_patterns,
)
from ._errors import NonFiniteLossError, RunError, TrainingInterrupted, main_guard
from ._evaluate import (
    choose_threshold,
    evaluate_classifier,
    evaluate_parser,
    evaluate_run,
    format_table,
    parse_thresholds,
    saturation_note,
)
from ._flags import build_parser
from ._objectives import bernoulli_entropy, distillation_loss, gate_information, rate_hinge_loss, target_rate_loss
from ._phases import (
    DEFAULT_FREEZE_BN,
    DEFAULT_RL_HEAD_LR,
    DEFAULT_SKIP_WEIGHT,
    backbone_parser,
    e2e_finetune,
    e2e_parser,
    rl_finetune,
    rl_parser,
    train_backbone,
)
from ._runs import DATA_KEYS, latest_checkpoint, read_run
from ._schedule import LRSchedule, make_scheduler, ramp_factor
from ._speed import (
    MIXED_PRECISION_CHOICES,
    ChannelsLastLoader,
    StochasticDepth,
    as_channels_last,
    bf16_supported,
    compile_in_place,
    compile_units,
    recalibrate_batchnorm,
    resolve_mixed_precision,
    survival_probabilities,
    uncompile,
)
from ._trainer import Trainer, TrainState

__all__ = [
    "rl",
    # flags, schedule, run folders, the loop, errors and exit codes
    "build_parser",
    "LRSchedule",
    "ramp_factor",
    "make_scheduler",
    "read_run",
    "latest_checkpoint",
    "DATA_KEYS",
    "Trainer",
    "TrainState",
    "RunError",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "main_guard",
    # the phases
    "backbone_parser",
    "e2e_parser",
    "rl_parser",
    "train_backbone",
    "e2e_finetune",
    "rl_finetune",
    "DEFAULT_SKIP_WEIGHT",
    "DEFAULT_FREEZE_BN",
    "DEFAULT_RL_HEAD_LR",
    # evaluation and the threshold sweep
    "evaluate_classifier",
    "parse_thresholds",
    "evaluate_parser",
    "evaluate_run",
    "format_table",
    "choose_threshold",
    "saturation_note",
    # speed
    "MIXED_PRECISION_CHOICES",
    "bf16_supported",
    "resolve_mixed_precision",
    "as_channels_last",
    "ChannelsLastLoader",
    "compile_units",
    "compile_in_place",
    "uncompile",
    "survival_probabilities",
    "StochasticDepth",
    "recalibrate_batchnorm",
    # objectives and controls
    "target_rate_loss",
    "rate_hinge_loss",
    "bernoulli_entropy",
    "gate_information",
    "distillation_loss",
    "shuffled_patterns",
    "random_rate_patterns",
    "accuracy_under_patterns",
    "predictions_under_patterns",
    "greedy_path",
    "greedy_fixed_subset",
    "control_rows",
]
