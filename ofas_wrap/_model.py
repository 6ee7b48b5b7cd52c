"""The adapted model: a stem, the OFAS head, gated residual blocks and the backbone's tail.

Everything here is TorchScript-scriptable: the gates stay real ``if`` branches (batch of one) and per-sample
routing (larger batches) in the scripted graph.
"""

import contextlib
from collections.abc import Iterator
from typing import List, Optional, Tuple

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from ._config import OFASConfig, check_threshold, float32_repr
from ._gating import check_gate_mask, mix_gated, straight_through_gates
from ._hub import OFASHubMixin

__all__ = ["GatedBlock", "OFASModel"]


class GatedBlock(nn.Module):
    """A residual block that can be skipped; when skipped its shortcut runs instead (Eq. 4).

    ``block`` is the backbone's own module (not a copy); ``shortcut`` computes what the block's shortcut
    computes (``nn.Identity`` or the projection path); ``after`` is whatever the backbone runs between this
    block and the next one (usually nothing). ``gate_index`` is the column of the head's output that gates
    this block, or -1 for a block that always runs.
    """

    def __init__(self, name: str, block: nn.Module, shortcut: nn.Module, gate_index: int,
                 after: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.name = name
        self.block = block
        self.shortcut = shortcut
        self.after = after if after is not None else nn.Identity()
        self.gate_index = gate_index
        self.identity_shortcut = isinstance(shortcut, nn.Identity)

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:
        """Training form: ``gate`` is a float ``(batch,)`` tensor (0/1 forward value, straight-through).

        The block computes its own projection; the separate shortcut call (needed for the mix and the gate's
        straight-through gradient) must not update the projection's BatchNorm statistics a second time, so its
        buffers are restored after it. With every gate open and no gradient to the gates, it is not run at all.
        """
        if self.gate_index < 0:
            return self.after(self.block(x))
        block_out = self.block(x)
        if self.identity_shortcut:
            return self.after(mix_gated(gate, block_out, x))
        if not gate.requires_grad and bool((gate == 1).all()):
            return self.after(block_out)
        return self.after(mix_gated(gate, block_out, self._shortcut_keeping_statistics(x)))

    @torch.jit.unused
    def _shortcut_keeping_statistics(self, x: Tensor) -> Tensor:
        # the shortcut runs on throw-away copies of its buffers (running statistics, step counters); the originals
        # are put back untouched (not copied into: autograd may have saved them for the backward pass)
        swapped = []
        for module in self.shortcut.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                swapped.append((module, name, buffer))
                setattr(module, name, buffer.clone())
        try:
            return self.shortcut(x)
        finally:
            for module, name, buffer in swapped:
                setattr(module, name, buffer)

    def forward_single(self, x: Tensor, run: bool) -> Tensor:
        """Inference for a batch of one: a plain branch, the skipped block is not computed."""
        if run or self.gate_index < 0:
            return self.after(self.block(x))
        return self.after(self.shortcut(x))

    def forward_routed(self, x: Tensor, run: Tensor, executed: int) -> Tensor:
        """Inference for a batch: ``run`` is a bool ``(batch,)`` tensor on the CPU, ``executed`` its count.

        The block runs only on the samples that execute it (gather, compute, scatter); the others take the
        shortcut. When all or none of the batch execute it, the batch goes through whole.
        """
        if self.gate_index < 0:
            executed = x.shape[0]
        if executed == 0:
            return self.after(self.shortcut(x))
        batch = x.shape[0]
        partial = executed < batch
        inputs = x
        run_index = torch.empty(0, dtype=torch.long)
        if partial:
            run_index = run.nonzero().flatten().to(x.device)
            inputs = x.index_select(0, run_index)
        computed = self.block(inputs)  # the block's only call site keeps the scripted graph small
        if not partial:
            return self.after(computed)
        if self.identity_shortcut:
            out = x.index_copy(0, run_index, computed)
        else:
            skip_index = (~run).nonzero().flatten().to(x.device)
            skipped = self.shortcut(x.index_select(0, skip_index))
            out = computed.new_empty([batch] + list(computed.shape[1:]))
            out.index_copy_(0, skip_index, skipped)
            out.index_copy_(0, run_index, computed)
        return self.after(out)


class OFASModel(OFASHubMixin, nn.Module):
    """A ResNet with an OFAS head: one computation after the stem decides which blocks each input skips.

    Built by :func:`ofas_wrap.adaptify`; a drop-in ``nn.Module`` with the backbone's output. In training mode
    every block runs and the straight-through gates mix block and shortcut (Eq. 4); in eval mode skipped
    blocks are not computed at all. ``threshold`` is the accuracy/latency knob (Eq. 1), stored in a buffer.
    """

    __jit_unused_properties__ = ["threshold", "ofas_config", "num_gates", "gated_block_names", "num_classes",
                                 "num_features", "pretrained_cfg", "default_cfg"]
    __jit_ignored_attributes__ = ["plan", "config", "_backbone"]

    last_gates: Tensor
    last_probs: Tensor
    forced_gate_mask: Optional[Tensor]

    def __init__(self, stem: nn.Module, head: nn.Module, blocks: List[GatedBlock], tail: nn.Module,
                 threshold: float, backbone: nn.Module, plan=None, config: Optional[dict] = None) -> None:
        super().__init__()
        self.stem = stem
        self.head = head
        self.blocks = nn.ModuleList(blocks)
        self.tail = tail
        self.register_buffer("gate_threshold", torch.tensor(0.0))
        self.threshold = threshold
        num_gates = sum(1 for b in blocks if b.gate_index >= 0)
        self.last_gates = torch.zeros(0, num_gates, dtype=torch.bool)
        self.last_probs = torch.zeros(0, num_gates)
        self.forced_gate_mask = None
        self.grad_checkpointing = False
        self.__dict__["_backbone"] = backbone
        self.__dict__["plan"] = plan
        self.__dict__["config"] = dict(config or {})

    # ----------------------------------------------------------------------------------------- the knob
    @property
    def threshold(self) -> float:
        """T of Eq. 1, in [0, 1): a gate is open when the head's output is >= T. T = 0 runs every block."""
        return float(self.gate_threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        # what the buffer stores counts, not what was passed (0.999999999 is 1.0 in float32)
        self.gate_threshold.fill_(check_threshold(value, dtype=self.gate_threshold.dtype))

    @property
    def ofas_config(self) -> OFASConfig:
        """The head settings as an :class:`ofas_wrap.OFASConfig` (a copy: change the model, not this), with the
        current threshold. ``model.config`` holds the same values as a dict, beside the backbone spec and metadata."""
        values = {key: self.config.get(key) for key in OFASConfig.keys()
                  if key in self.config or key not in OFASConfig.OPTIONAL_KEYS}
        values["threshold"] = float32_repr(self.threshold)  # as config.json records it: 0.3
        return OFASConfig.from_dict(values)

    @property
    def num_gates(self) -> int:
        """The number of gated blocks, n in Table II."""
        return sum(1 for b in self.blocks if b.gate_index >= 0)

    @property
    def gated_block_names(self) -> List[str]:
        return [b.name for b in self.blocks if b.gate_index >= 0]

    # -------------------------------------------------------------------------------------- forward
    def gate_probabilities(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Run the stem and the head: returns ``(stem_output, S_L)`` with ``S_L`` of shape (batch, n)."""
        features = self.stem(x)
        return features, self.head(features)

    @torch.jit.unused
    def forward_from_stem(self, features: Tensor, gates: Tensor) -> Tensor:
        """Run the blocks and the tail under given gates, shape ``(batch, num_gates)``.

        Float gates (training) mix block and shortcut as in Eq. 4 with gradients; bool gates run the
        inference path where skipped blocks are not computed.
        """
        if gates.dtype == torch.bool:
            return self._run_inference(features, gates.cpu())
        return self._run_training(features, gates)

    def _run_training(self, features: Tensor, gates: Tensor) -> Tensor:
        return self.tail(self._blocks_training(features, gates))

    def _blocks_training(self, features: Tensor, gates: Tensor) -> Tensor:
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            gate = gates[:, max(block.gate_index, 0)]
            if checkpointing:  # activations recomputed in the backward pass instead of kept (timm's option)
                features = torch.utils.checkpoint.checkpoint(block, features, gate, use_reentrant=False)
            else:
                features = block(features, gate)
        return features

    def _run_inference(self, features: Tensor, decisions: Tensor) -> Tensor:
        """``decisions``: bool (batch, num_gates) on the CPU, read once; skipped blocks are not computed."""
        return self.tail(self._blocks_inference(features, decisions))

    def _blocks_inference(self, features: Tensor, decisions: Tensor) -> Tensor:
        if features.shape[0] == 1:
            row: List[bool] = decisions[0].tolist()
            for block in self.blocks:
                features = block.forward_single(features, block.gate_index < 0 or row[block.gate_index])
            return features
        counts: List[int] = decisions.sum(0).tolist()
        for block in self.blocks:
            index = max(block.gate_index, 0)
            features = block.forward_routed(features, decisions[:, index], counts[index])
        return features

    def forward(self, x: Tensor) -> Tensor:
        """Training mode (eager): straight-through gates. Eval mode, and always once scripted: real skipping."""
        return self.tail(self._forward_blocks(x))

    def _forward_blocks(self, x: Tensor) -> Tensor:
        features, probs = self.gate_probabilities(x)
        self.last_probs = probs
        forced = self.forced_gate_mask
        if not torch.jit.is_scripting():  # a scripted model keeps the inference path only: half the graph
            if self.training:
                if forced is None:
                    gates = straight_through_gates(probs, self.gate_threshold)
                else:
                    gates = forced.to(device=probs.device, dtype=probs.dtype).expand(probs.shape[0], -1)
                self.last_gates = gates.detach() > 0.5
                return self._blocks_training(features, gates)
        if forced is None:
            decisions = (probs >= self.gate_threshold).cpu()  # the one host synchronisation per forward
        else:
            decisions = forced.cpu().expand(probs.shape[0], -1)
        self.last_gates = decisions
        return self._blocks_inference(features, decisions)

    # ------------------------------------------------------------------------------------ timm's interface
    @torch.jit.unused
    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, the head's decisions and the gated blocks: the feature map the backbone's tail pools (timm's
        ``forward_features``); the decisions follow the threshold and the mode exactly as in :meth:`forward`."""
        return self._forward_blocks(x)

    @torch.jit.unused
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The backbone's tail on :meth:`forward_features`' output (timm's ``forward_head``)."""
        if pre_logits:
            head = getattr(self._backbone, "forward_head", None)
            if head is None:
                raise NotImplementedError(f"{type(self._backbone).__name__} has no forward_head(pre_logits=True)")
            return head(x, pre_logits=True)
        return self.tail(x)

    @torch.jit.unused
    def get_classifier(self) -> nn.Module:
        """The backbone's classifier (timm's ``get_classifier``, else its ``fc``)."""
        getter = getattr(self._backbone, "get_classifier", None)
        if callable(getter):
            return getter()
        if isinstance(getattr(self._backbone, "fc", None), nn.Module):
            return self._backbone.fc
        raise AttributeError(f"{type(self._backbone).__name__} has no get_classifier() and no fc")

    @torch.jit.unused
    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: in training, each gated block's activations are recomputed in the backward pass instead
        of kept (less memory, about one more forward of time). As with any recomputation, a block's BatchNorm
        running statistics are updated again when it is recomputed; eval mode and exports are unaffected."""
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be True or False, got {enable!r}")
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (timm's ``reset_classifier``): set on the backbone
        and in the tail graph, and recorded so that ``save_pretrained`` / ``from_pretrained`` rebuild it. The gates
        and every other weight are kept. Checks come first: on an error nothing is changed."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}; for features without a "
                             "classifier use forward_features() or forward_head(x, pre_logits=True)")
        if global_pool is not None:
            raise ValueError("global_pool cannot change after the surgery (the tail is a traced graph): build the "
                             "backbone with the pooling you want, then adaptify it")
        old = self.get_classifier()
        places = [name for name, module in self.tail.named_modules() if module is old and name]
        reset = getattr(self._backbone, "reset_classifier", None)
        if not places or not (callable(reset) or isinstance(getattr(self._backbone, "fc", None), nn.Linear)):
            raise AttributeError(f"cannot replace the classifier of this {type(self._backbone).__name__}: it has no "
                                 "reset_classifier() or fc the surgery's tail uses")
        if callable(reset):
            reset(num_classes)
        else:
            self._backbone.fc = nn.Linear(self._backbone.fc.in_features, num_classes)
        reference = next(old.parameters(), None)
        new = self.get_classifier()
        if reference is not None:
            new.to(device=reference.device, dtype=reference.dtype)
        for name in places:
            parent, _, attribute = name.rpartition(".")
            setattr(self.tail.get_submodule(parent) if parent else self.tail, attribute, new)
        from .models._user import FACTORY_SOURCE

        spec = self.config.get("backbone")
        if isinstance(spec, dict):
            kwargs = spec.setdefault("kwargs", {})
            if spec.get("source") != FACTORY_SOURCE or "num_classes" in kwargs:
                kwargs["num_classes"] = num_classes
        names = self.config.get("class_names")
        if names is not None and len(names) != num_classes:
            self.config["class_names"] = None  # they named the old classes

    @property
    def num_classes(self) -> Optional[int]:
        """The backbone's ``num_classes`` (or its ``fc``'s output size)."""
        return self._backbone_size("num_classes", "out_features")

    @property
    def num_features(self) -> Optional[int]:
        """The backbone's ``num_features``, the channels its tail pools (or its ``fc``'s input size)."""
        return self._backbone_size("num_features", "in_features")

    @torch.jit.unused
    def _backbone_size(self, name: str, linear_field: str) -> Optional[int]:
        value = getattr(self._backbone, name, None)
        if isinstance(value, int):
            return value
        classifier = getattr(self._backbone, "fc", None)
        return getattr(classifier, linear_field) if isinstance(classifier, nn.Linear) else None

    @property
    def pretrained_cfg(self) -> dict:
        """The backbone's timm ``pretrained_cfg`` (so ``timm.data.resolve_model_data_config`` resolves its
        input size, crop and normalisation), with ``input_size`` from the surgery where the backbone has none."""
        cfg = dict(getattr(self._backbone, "pretrained_cfg", None) or {})
        cfg.setdefault("input_size", tuple(self.config.get("input_size") or ()) or None)
        return cfg

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    # ------------------------------------------------------------------------------------ utilities
    @torch.jit.unused
    @contextlib.contextmanager
    def forced_gates(self, mask: Tensor) -> Iterator['OFASModel']:
        """Force a gate pattern inside the ``with`` block (evaluation, RL, benchmarks).

        ``mask`` is a bool tensor of shape ``(num_gates,)`` (the same for every sample) or
        ``(batch, num_gates)``; ``True`` means execute.

        Example:
            >>> import torch, ofas_wrap
            >>> model = ofas_wrap.adaptify(ofas_wrap.models.cifar_resnet(20)).eval()
            >>> with model.forced_gates(torch.zeros(model.num_gates, dtype=torch.bool)):
            ...     _ = model(torch.randn(2, 3, 32, 32))
            >>> int(model.last_gates.sum())
            0
        """
        mask = check_gate_mask(mask, self.num_gates)
        previous = self.forced_gate_mask
        self.forced_gate_mask = mask
        try:
            yield self
        finally:
            self.forced_gate_mask = previous

    @torch.jit.unused
    def unwrap(self) -> nn.Module:
        """The plain backbone, with whatever training changed in its weights (they were shared, not copied)."""
        return self._backbone

    @torch.jit.unused
    def executed_flops(self, gates: Optional[Tensor] = None) -> Tensor:
        """FLOPs per sample (at the plan's input size) under ``gates`` (default: ``last_gates``), shape (batch,)."""
        if self.plan is None:
            raise RuntimeError("this model has no surgery plan; build it with ofas_wrap.adaptify")
        gates = self.last_gates if gates is None else gates
        return self.plan.executed_flops(gates.cpu())

    def extra_repr(self) -> str:
        return f"num_gates={self.num_gates}, threshold={self.threshold:.3g}"
