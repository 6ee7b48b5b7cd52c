"""What should I deploy? OFAS beside the methods users pick instead, at the same budget and measured latency.

- ``_verdict``: the decision rule of docs/results.md (OFAS against the static curve), one pure function;
- ``_depth``: depth pruning for a latency target (which blocks to remove, chosen on held-out images by measured
  cost; ``ofas_wrap.prune_blocks`` removes them);
- ``_channel``: channel pruning through Torch-Pruning (the blocks' inner channels), its ratio found on measured latency;
- ``_timing``: every row timed as deployed, in interleaved rounds, at batch 1 and a server batch;
- ``_baselines``: the other input-adaptive networks built from the same adapted model (BranchyNet-style early exit,
  SkipNet-style gates) and the naive masked execution;
- ``_early_exit``: early exit's fine-tune, its threshold sweep on held-out images and its choice per target;
- ``_compare``: :func:`compare`, the run itself (``recipes/compare.py``, ``ofas-wrap compare``), and
  :func:`deploy_decision`, the per-target verdict.
"""

from ._baselines import (
    EarlyExitResNet,
    ExitHead,
    FFGate,
    MaskedExecution,
    SkipNetStyle,
    early_exit_loss,
    exit_decisions,
    softmax_entropy,
    stage_ends,
)
from ._channel import channel_ratio_for_target, prunable_layers, prune_channels
from ._compare import METHODS, compare, compare_parser, deploy_decision, main
from ._depth import blocks_to_remove, choose_keep, removal_harm, removal_order
from ._early_exit import choose_exit, exit_sweep, finetune_early_exit, load_early_exit, parse_fractions
from ._timing import InterleavedTimer, deployed
from ._verdict import MIN_ADAPTIVE_GATES, RULE, decide, interpolate, sentence

__all__ = [
    "EarlyExitResNet",
    "ExitHead",
    "FFGate",
    "MaskedExecution",
    "SkipNetStyle",
    "choose_exit",
    "early_exit_loss",
    "exit_decisions",
    "exit_sweep",
    "finetune_early_exit",
    "load_early_exit",
    "parse_fractions",
    "softmax_entropy",
    "stage_ends",
    "METHODS",
    "InterleavedTimer",
    "channel_ratio_for_target",
    "compare",
    "compare_parser",
    "deploy_decision",
    "deployed",
    "main",
    "prunable_layers",
    "prune_channels",
    "MIN_ADAPTIVE_GATES",
    "RULE",
    "blocks_to_remove",
    "choose_keep",
    "decide",
    "interpolate",
    "removal_harm",
    "removal_order",
    "sentence",
]
