"""ofas-wrap: Once For All Skip (OFAS) for any torchvision, timm or hand-written ResNet.

Example:
    >>> import torch, ofas_wrap
    >>> model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(38), variant="I", threshold=0.5).eval()
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from . import data, models
from ._bench import LatencyResult, SweepResult, format_sweep, measure_latency, per_image_latency, sweep_thresholds
from ._calibration import calibrate_head, fold_head_temperature, head_temperature
from ._config import OFASConfig
from ._costs import gate_costs, measure_block_table
from ._errors import SurgeryError
from ._export import (
    export_onnx,
    export_program,
    export_torchscript,
    load_torchscript,
    quantize_onnx,
    script_with_fx_fallback,
    set_onnx_threshold,
)
from ._factory import create_model
from ._gating import hard_gates, mix_gated, straight_through_gates
from ._head import OFASHead
from ._hub import CheckpointError
from ._model import GatedBlock, OFASModel, adaptify
from ._plan import BlockPlan, OuterShortcutPlan, SurgeryPlan, count_flops
from ._prune import prune_blocks
from ._version import __version__

__all__ = [
    "__version__",
    "adaptify",
    "OFASConfig",
    "calibrate_head",
    "head_temperature",
    "fold_head_temperature",
    "create_model",
    "OFASModel",
    "GatedBlock",
    "OFASHead",
    "SurgeryError",
    "SurgeryPlan",
    "BlockPlan",
    "OuterShortcutPlan",
    "count_flops",
    "gate_costs",
    "measure_block_table",
    "hard_gates",
    "straight_through_gates",
    "mix_gated",
    "models",
    "data",
    "rl",
    "CheckpointError",
    "export_torchscript",
    "prune_blocks",
    "script_with_fx_fallback",
    "load_torchscript",
    "export_program",
    "export_onnx",
    "quantize_onnx",
    "per_image_latency",
    "set_onnx_threshold",
    "measure_latency",
    "sweep_thresholds",
    "format_sweep",
    "LatencyResult",
    "SweepResult",
]

# the training code (the [train] extra) is never imported by the core: ``ofas_wrap.rl`` and ``ofas_wrap.training``
# are loaded on first use, so ``import ofas_wrap`` stays light and ``from ofas_wrap import rl`` works as before
_LAZY = ("rl", "training")


def __getattr__(name: str):
    if name == "training":
        import ofas_wrap.training  # not `from . import`: that would ask this __getattr__ again

        value = ofas_wrap.training
    elif name == "rl":
        import ofas_wrap.training.rl

        value = ofas_wrap.training.rl
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
