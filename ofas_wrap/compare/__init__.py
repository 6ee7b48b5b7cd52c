"""What should I deploy? OFAS beside the methods users pick instead, at the same budget and measured latency.

- ``_verdict``: the decision rule of docs/results.md (OFAS against the static curve), one pure function;
- ``_depth``: depth pruning for a latency target (which blocks to remove, chosen on held-out images by measured
  cost; ``ofas_wrap.prune_blocks`` removes them).
"""

from ._depth import blocks_to_remove, choose_keep, removal_harm, removal_order
from ._verdict import MIN_ADAPTIVE_GATES, RULE, decide, interpolate, sentence

__all__ = [
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
