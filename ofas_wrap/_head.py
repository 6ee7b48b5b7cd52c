"""The OFAS head of Table II: one computation after the stem decides every gate (Eq. 2 and 3)."""

from __future__ import annotations

from torch import Tensor, nn

from ._config import OFASConfig

__all__ = ["OFASHead", "VARIANTS", "resolve_variant"]

VARIANTS = OFASConfig.VARIANTS
_ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}  # OFASConfig.HIDDEN_ACTS


def resolve_variant(variant: str, depth: int) -> str:
    """``"auto"`` picks OFAS-II for backbones deeper than 50 layers, as the paper does (Section IV-A)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown OFAS variant {variant!r}; allowed: {', '.join(repr(v) for v in VARIANTS)}")
    if variant == "auto":
        return "II" if depth > 50 else "I"
    return variant


class OFASHead(nn.Module):
    """AvgPool, 2 (OFAS-I) or 3 (OFAS-II) linear layers and a Sigmoid: ``S_L`` of Eq. 2/3.

    OFAS-I: FC(C, 2C), FC(2C, n). OFAS-II: FC(C, C), FC(C, 3C), FC(3C, n). As in the paper there is no
    activation between the FCs (``hidden_act="none"``) and the input is detached from the stem
    (``detach_input=True``); both are options.

    Example:
        >>> import torch
        >>> head = OFASHead(16, num_gates=18, variant="I")
        >>> head(torch.randn(1, 16, 32, 32)).shape
        torch.Size([1, 18])
    """

    def __init__(self, in_channels: int, num_gates: int, variant: str = "I", hidden_act: str = "none",
                 detach_input: bool = True, gate_bias_init: float | None = None, pool_grid: int = 1) -> None:
        super().__init__()
        if variant not in OFASConfig.RESOLVED_VARIANTS:
            raise ValueError(f"OFASHead variant must be 'I' or 'II', got {variant!r}")
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {hidden_act!r}; allowed: {', '.join(_ACTIVATIONS)}")
        if not isinstance(pool_grid, int) or isinstance(pool_grid, bool) or pool_grid < 1:
            raise ValueError(f"pool_grid must be a positive integer (1 = the paper's global pool), got {pool_grid!r}")
        c = in_channels
        inputs = c * pool_grid * pool_grid  # a G x G grid of average-pooled cells, flattened
        widths = [inputs, 2 * c] if variant == "I" else [inputs, c, 3 * c]
        widths.append(num_gates)
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if index > 0:
                layers.append(_ACTIVATIONS[hidden_act]())
            layers.append(nn.Linear(fan_in, fan_out))
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        self.fcs = nn.Sequential(*layers)
        self.sigmoid = nn.Sigmoid()
        self.variant = variant
        self.detach_input = detach_input
        if gate_bias_init is not None:
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.constant_(last.bias, gate_bias_init)

    def forward(self, x: Tensor) -> Tensor:
        if self.detach_input:
            x = x.detach()
        return self.sigmoid(self.fcs(self.pool(x).flatten(1)))
