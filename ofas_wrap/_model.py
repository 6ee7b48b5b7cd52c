"""The adapted model, and how it is built, saved and loaded.

- :class:`OFASModel`: a stem, the OFAS head, gated residual blocks (:class:`GatedBlock`, ``_block.py``) and the
  backbone's tail. Everything its ``forward`` runs is TorchScript-scriptable: the gates stay real ``if`` branches
  (batch of one) and per-sample routing (larger batches) in the scripted graph.
- :func:`adaptify`: calls the surgery (``_surgery.py``, which cuts the backbone and imports no model class) and
  builds the model from its parts.
- ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (:class:`OFASHubMixin`, the hooks of
  ``huggingface_hub.ModelHubMixin``): the model calls the files layer (``_hub.py``), the model's side of the
  config (``_assembly.py``) and, to rebuild a saved model, the surgery; never the reverse.
"""

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, List, Optional, Tuple, Union

import torch
import torch.utils.checkpoint
from huggingface_hub import ModelHubMixin
from torch import Tensor, nn

from ._assembly import _absolute_factory, _build_backbone, _bundle_factory_code, build_config, infer_backbone_spec
from ._block import CarryNothing, GatedBlock
from ._config import OFASConfig, check_threshold, float32_repr
from ._gating import forcing_gates, straight_through_gates
from ._hub import (
    CARD_TAGS,
    CONFIG_NAME,
    METADATA_KEYS,
    PUSH_KWARGS,
    WEIGHTS_NAME,
    CheckpointError,
    PathLike,
    _card_kwargs,
    _load_weights,
    _metadata_overrides,
    _resolve_folder,
    _staging_folder,
    _users_card,
    _write_folder,
    check_repo_id,
    ignore_hub_card,
    model_card,
    read_config,
)
from ._prune import PrunedWeights, check_keep, prune_blocks, pruned_config, read_pruned
from ._surgery import cut_backbone
from .models._user import FACTORY_SOURCE, build_from_factory

__all__ = ["GatedBlock", "OFASModel", "OFASHubMixin", "adaptify"]


# ------------------------------------------------------------------------------ save, load and share
class OFASHubMixin(ModelHubMixin, library_name="ofas-wrap", tags=CARD_TAGS):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for :class:`ofas_wrap.OFASModel`, on
    ``huggingface_hub.ModelHubMixin``.

    The mixin's hooks do the work: ``_save_pretrained`` writes ``model.safetensors``, ``config.json`` and the card
    into a folder, ``_from_pretrained`` rebuilds the model from a folder or a Hub repo and loads its weights strictly.
    The three public methods are the mixin's, with the mixin's arguments (``force_download``, ``branch``,
    ``allow_patterns`` / ``ignore_patterns`` / ``delete_patterns``, ``push_to_hub=True``) and ofas-wrap's
    (descriptions, ``backbone=``, ``threshold=``, ``trust_remote_code``); they check everything before a file is
    written or a request sent, save atomically, and never overwrite a README.md the user edited.

    None of these methods is called from ``forward``, so ``torch.jit.script(model)`` never compiles them.
    """

    # the settings live in model.config and config.json is built from the model; a (read-only, empty) config here
    # stops the mixin's __new__ from keeping a second, stale copy of every model's constructor arguments
    _hub_mixin_config: Any = MappingProxyType({})

    @torch.jit.unused
    def save_pretrained(self, save_directory: PathLike, *, class_names: Optional[Sequence[str]] = None,
                        normalization: Optional[dict[str, Sequence[float]]] = None,
                        datasets: Optional[Sequence[str]] = None, metrics: Optional[Sequence[dict]] = None,
                        license: Optional[str] = None, model_name: Optional[str] = None,
                        config: Optional[dict[str, Any]] = None, repo_id: Optional[str] = None,
                        push_to_hub: bool = False, model_card_kwargs: Optional[dict[str, Any]] = None,
                        prune: Optional[Any] = None, **push_to_hub_kwargs: Any) -> Any:
        """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card to ``save_directory``.

        The write is atomic: everything goes to a hidden temporary folder beside ``save_directory``, which
        then replaces it with a rename, so an interrupted save leaves the previous folder (or nothing)
        rather than a half-written model. Files of an existing folder that are not ours are kept, and so is a
        ``README.md`` the user wrote or edited (only the card our last save wrote, whose SHA-256 ``config.json``
        records as ``card_sha256``, is renewed).

        The optional descriptions default to the same keys of ``model.config`` (``class_names``,
        ``normalization`` = ``{"mean": [...], "std": [...]}``, ``datasets`` (Hub dataset ids), ``metrics``
        (rows of ``{"threshold", "accuracy", "executed_blocks", "mflops", "latency_ms"}``; the card's
        ``eval_results`` list each row's accuracy), ``license``); a timm backbone's ``pretrained_cfg`` mean/std is
        used when no normalisation is given. ``config`` may carry the same descriptions as a dict (what
        ``push_to_hub`` passes on); the OFAS settings themselves always come from the model.

        ``push_to_hub=True`` then uploads the model to ``repo_id`` (default: the folder's name) with
        :meth:`push_to_hub`, which takes ``push_to_hub_kwargs`` (``private``, ``token``, ``branch``, ...), and returns
        its commit info; otherwise the folder is returned. ``model_card_kwargs`` may hold ``model_name`` (the
        card's title) and ``repo_id`` (the id the card's usage example loads).

        ``prune=keep`` saves the depth-pruned network instead (:func:`ofas_wrap.prune_blocks`: one bool per gated
        block, True = keep, or the names of the blocks to keep): only the weights it still uses, under the
        backbone's own names, and a ``config.json`` whose ``pruned`` section records the pattern and the removed
        blocks. :meth:`from_pretrained` returns that plain network. The OFAS model's per-threshold ``metrics`` are
        not carried over (they do not describe it), and the folder is not uploaded (``push_to_hub=True`` is refused:
        upload the saved folder with ``huggingface_hub.HfApi().upload_folder``).

        Example:
            >>> import tempfile, ofas_wrap
            >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16))
            >>> folder = model.save_pretrained(tempfile.mkdtemp() + "/resnet8-ofas")
            >>> sorted(p.name for p in folder.iterdir())
            ['README.md', 'config.json', 'model.safetensors']
        """
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder; save_pretrained writes a folder there")
        overrides = _metadata_overrides(config, class_names=class_names, normalization=normalization,
                                        datasets=datasets, metrics=metrics, license=license)
        card_kwargs = _card_kwargs(model_card_kwargs, model_name)
        if push_to_hub:
            unknown = sorted(set(push_to_hub_kwargs) - set(PUSH_KWARGS))
            if unknown:
                raise TypeError(f"save_pretrained(push_to_hub=True) got unexpected arguments {unknown}; push_to_hub "
                                f"takes {list(PUSH_KWARGS)}")
            repo_id = target.name if repo_id is None else repo_id
            check_repo_id(repo_id)
            card_kwargs.setdefault("repo_id", repo_id)
        elif push_to_hub_kwargs or repo_id is not None:
            given = sorted(push_to_hub_kwargs) + (["repo_id"] if repo_id is not None else [])
            raise TypeError(f"save_pretrained got {given}, which only an upload uses; pass push_to_hub=True to "
                            "upload the model as well, or leave them out")
        pruned = None
        if prune is not None:
            if push_to_hub:
                raise TypeError("save_pretrained(prune=...) writes a local folder only; save it, then upload the "
                                "folder with huggingface_hub.HfApi().upload_folder")
            if overrides.get("metrics") is not None:
                raise TypeError("metrics= rows are per threshold, and a pruned network has none; leave metrics out "
                                "with prune=")
            keep = check_keep(prune, self.gated_block_names)
            built = pruned_config(self, keep, build_config(self, **overrides))
            pruned = PrunedWeights(prune_blocks(self, keep))
        else:
            built = build_config(self, **overrides)
        users_card = _users_card(target)
        with _staging_folder(target) as staging:
            self._save_pretrained(staging, config=built, card_text=users_card, pruned=pruned, **card_kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id, config=overrides or None, model_card_kwargs=card_kwargs,
                                    **push_to_hub_kwargs)
        return target

    @torch.jit.unused
    def _save_pretrained(self, save_directory: Path, *, config: Optional[dict[str, Any]] = None,
                         card_text: Optional[str] = None, model_name: Optional[str] = None,
                         repo_id: Optional[str] = None, pruned: Optional[PrunedWeights] = None) -> None:
        """The mixin's hook: write the model's three files (and a factory's ``.py`` file) into ``save_directory``.

        ``config`` is :func:`build_config`'s output (built from the model when None); ``card_text`` a README.md to
        keep instead of generating the card; ``pruned`` the depth-pruned network whose weights are written instead
        (``config`` then is :func:`pruned_config`'s). :meth:`save_pretrained` calls this on its staging folder."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = _bundle_factory_code(build_config(self) if config is None else config, folder)
        _write_folder(self if pruned is None else pruned, config, folder, model_name=model_name, repo_id=repo_id,
                      card_text=card_text)

    @torch.jit.unused
    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        """The ``huggingface_hub.ModelCard`` a save writes for this model (``model_name``, ``repo_id`` as in
        ``model_card_kwargs``): Hub metadata (library, tags, datasets, license, base_model, eval_results) and a
        description with usage, metrics per threshold, FLOPs and the input."""
        from huggingface_hub import ModelCard

        if args:
            raise TypeError("generate_model_card takes keyword arguments only (model_name=, repo_id=)")
        card_kwargs = _card_kwargs(kwargs, None)
        return ModelCard(model_card(build_config(self), **card_kwargs))

    @classmethod
    @torch.jit.unused
    def from_pretrained(cls, dir_or_repo_id: PathLike, backbone: Optional[nn.Module] = None, *,
                        threshold: Optional[float] = None, device: Union[str, torch.device] = "cpu",
                        revision: Optional[str] = None, token: Union[str, bool, None] = None,
                        cache_dir: Optional[PathLike] = None, local_files_only: bool = False,
                        force_download: bool = False, leaf_modules: Sequence[type] = (),
                        trust_remote_code: bool = False) -> Any:
        """Rebuild a saved OFAS model (in eval mode) from a local folder or a Hugging Face Hub repo id.

        The backbone is rebuilt from ``config.json`` (``cifar`` / ``timm`` / ``torchvision``, random weights,
        nothing downloaded but the repo itself), adapted with the saved OFAS settings, and the weights are
        loaded strictly: a missing or unexpected weight, a shape mismatch, other residual blocks or another
        backbone are errors naming the offending entries. For your own backbone class, which no registry can
        rebuild, build it yourself and pass it as ``backbone=`` (it is adapted and the weights loaded into it).

        A folder written by ``save_pretrained(dir, prune=keep)`` returns the depth-pruned network instead of an
        OFASModel: the backbone is rebuilt (or ``backbone=`` copied) and adapted as above, the blocks its
        ``config.json`` records as removed are taken out (:func:`ofas_wrap.prune_blocks`) and its weights loaded
        strictly; a plain ``nn.Module`` of the backbone's class, in eval mode. ``threshold=`` is refused for it.

        Args:
            dir_or_repo_id: a folder written by ``save_pretrained``, or a Hub repo id (``"user/name"``).
            backbone: the plain backbone to adapt instead of rebuilding it from the config.
            threshold: override the saved threshold T.
            device: where to put the model.
            revision, token, cache_dir, local_files_only, force_download: passed to
                ``huggingface_hub.snapshot_download`` (a repo id only).
            leaf_modules: as for :func:`ofas_wrap.adaptify`, for backbones torch.fx cannot trace through.
            trust_remote_code: a folder whose backbone comes from a user's factory (``file.py:FACTORY``, kept in
                the folder, or ``package.module:FACTORY``) runs that code to rebuild it only when this is True.

        Raises:
            FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
            CheckpointError: a bad config, a corrupted weights file, weights that do not fit, an unknown or
                unreachable repo id.

        Example:
            >>> import tempfile, ofas_wrap
            >>> model = ofas_wrap.create_model("cifar:resnet8", input_size=(3, 16, 16), threshold=0.3)
            >>> folder = model.save_pretrained(tempfile.mkdtemp() + "/m")
            >>> round(ofas_wrap.OFASModel.from_pretrained(folder).threshold, 6)
            0.3
        """
        if threshold is not None:
            check_threshold(threshold)
        return cls._from_pretrained(
            model_id=os.fspath(dir_or_repo_id), revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, backbone=backbone, threshold=threshold, device=device,
            leaf_modules=leaf_modules, trust_remote_code=trust_remote_code,
        )

    @classmethod
    @torch.jit.unused
    def _from_pretrained(cls, *, model_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                         force_download: bool, local_files_only: bool, token: Union[str, bool, None],
                         backbone: Optional[nn.Module] = None, threshold: Optional[float] = None,
                         device: Union[str, torch.device] = "cpu", leaf_modules: Sequence[type] = (),
                         trust_remote_code: bool = False) -> Any:
        """The mixin's hook: find the folder (downloading a repo id), check ``config.json``, rebuild, load strictly."""
        folder = _resolve_folder(model_id, revision=revision, token=token, cache_dir=cache_dir,
                                 local_files_only=local_files_only, force_download=force_download)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: {folder} is not a folder written by save_pretrained "
                    f"(it needs {CONFIG_NAME} and {WEIGHTS_NAME})"
                )
        config = read_config(config_path)
        if threshold is not None:
            check_threshold(threshold)
        keep = read_pruned(config, config_path)
        if keep is not None and threshold is not None:
            raise ValueError(f"{folder} holds a depth-pruned network, which has no gates and no threshold; leave "
                             "threshold= out")
        model = _rebuild(config, config_path, backbone, leaf_modules, trust_remote_code)
        if not isinstance(model, cls):
            raise TypeError(f"{cls.__name__}.from_pretrained built a {type(model).__name__}")
        if keep is not None:
            network = prune_blocks(model, keep)
            _load_weights(PrunedWeights(network), weights_path, config)
            return network.eval().to(device)
        _load_weights(model, weights_path, config)
        model.threshold = float(config["ofas"]["threshold"] if threshold is None else threshold)
        model.config["backbone"] = _absolute_factory(config["backbone"], folder) or infer_backbone_spec(model.unwrap())
        for key in METADATA_KEYS:
            if config.get(key) is not None:
                model.config[key] = config[key]
        return model.eval().to(device)

    @torch.jit.unused
    def push_to_hub(self, repo_id: str, *, config: Optional[dict[str, Any]] = None,
                    commit_message: str = "Upload OFAS model", private: Optional[bool] = None,
                    token: Optional[str] = None, branch: Optional[str] = None, create_pr: bool = False,
                    allow_patterns: Union[list[str], str, None] = None,
                    ignore_patterns: Union[list[str], str, None] = None,
                    delete_patterns: Union[list[str], str, None] = None,
                    model_card_kwargs: Optional[dict[str, Any]] = None, revision: Optional[str] = None,
                    overwrite_card: bool = False, **save_kwargs: Any) -> Any:
        """Upload the ``save_pretrained`` folder to the Hub repo ``repo_id`` (created if missing), in one commit.

        A README.md the repo already has on ``branch`` (a model card edited on the Hub) is kept: the upload then
        leaves out the generated card, as a local save keeps an edited README. ``overwrite_card=True`` replaces it.

        ``huggingface_hub.ModelHubMixin.push_to_hub`` does the upload (``HfApi.create_repo(exist_ok=True)``, then
        :meth:`save_pretrained` into a temporary folder and ``HfApi.upload_folder``): ``branch`` (``revision`` is
        the older name of it), ``create_pr``, ``allow_patterns`` / ``ignore_patterns`` (which files go up) and
        ``delete_patterns`` (remote files to delete in the same commit) are its. ``save_kwargs`` are the
        descriptions of :meth:`save_pretrained` and ``model_name``. The repo id, the arguments and the descriptions
        are checked before anything is written or sent. Returns the ``CommitInfo`` of the upload.

        Example (needs network access and a write token, so it is not run here):
            >>> model.push_to_hub("your-name/resnet38-ofas-cifar10", private=True)  # doctest: +SKIP
        """
        check_repo_id(repo_id)
        if revision is not None:
            if branch is not None and branch != revision:
                raise ValueError(f"push_to_hub got branch={branch!r} and revision={revision!r}; revision is the older "
                                 "name of branch, pass one of them")
            branch = revision
        model_name = save_kwargs.pop("model_name", None)
        overrides = _metadata_overrides(config, **{k: save_kwargs.pop(k, None) for k in METADATA_KEYS})
        if save_kwargs:
            raise TypeError(f"push_to_hub got unexpected arguments {sorted(save_kwargs)}")
        card_kwargs = _card_kwargs(model_card_kwargs, model_name)
        card_kwargs.setdefault("repo_id", repo_id)
        build_config(self, **overrides)  # the descriptions are checked before the repo is created
        if not overwrite_card:
            ignore_patterns = ignore_hub_card(repo_id, token=token, revision=branch, allow_patterns=allow_patterns,
                                              ignore_patterns=ignore_patterns)
        return super().push_to_hub(
            repo_id, config=overrides or None, commit_message=commit_message, private=private, token=token,
            branch=branch, create_pr=create_pr, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
            delete_patterns=delete_patterns, model_card_kwargs=card_kwargs,
        )


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
                 threshold: float, backbone: nn.Module, plan=None, config: Optional[dict] = None,
                 entry: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.stem = stem
        self.head = head
        self.blocks = nn.ModuleList(blocks)
        self.tail = tail
        # outer shortcuts (docs/surgery.md): values carried across blocks, from the entry (what the stem's output
        # gives them) through each block's link; a plain chain carries nothing and skips these calls
        self.carries = entry is not None
        self.entry = entry if entry is not None else CarryNothing()
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
        carried: List[Tensor] = []
        if self.carries:
            features, carried = self.entry(features, carried)
        for block in self.blocks:
            gate = gates[:, max(block.gate_index, 0)]
            if checkpointing:  # activations recomputed in the backward pass instead of kept (timm's option)
                features = torch.utils.checkpoint.checkpoint(block, features, gate, use_reentrant=False)
            else:
                features = block(features, gate)
            if self.carries:
                features, carried = block.link(features, carried)
        return features

    def _run_inference(self, features: Tensor, decisions: Tensor) -> Tensor:
        """``decisions``: bool (batch, num_gates) on the CPU, read once; skipped blocks are not computed."""
        return self.tail(self._blocks_inference(features, decisions))

    def _blocks_inference(self, features: Tensor, decisions: Tensor) -> Tensor:
        carried: List[Tensor] = []
        if self.carries:
            features, carried = self.entry(features, carried)
        if features.shape[0] == 1:
            row: List[bool] = decisions[0].tolist()
            for block in self.blocks:
                features = block.forward_single(features, block.gate_index < 0 or row[block.gate_index])
                if self.carries:
                    features, carried = block.link(features, carried)
            return features
        counts: List[int] = decisions.sum(0).tolist()
        for block in self.blocks:
            index = max(block.gate_index, 0)
            features = block.forward_routed(features, decisions[:, index], counts[index])
            if self.carries:
                features, carried = block.link(features, carried)
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
    def forced_gates(self, mask: Tensor) -> contextlib.AbstractContextManager['OFASModel']:
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
        return forcing_gates(self, mask, self.num_gates)

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


# ------------------------------------------------------------------------------------------ building
def adaptify(
    model: nn.Module,
    variant: str = "auto",
    threshold: float = 0.5,
    gate_downsample: bool = True,
    hidden_act: str = "none",
    detach_input: bool = True,
    gate_bias_init: Optional[float] = None,
    input_size: Optional[Sequence[int]] = None,
    leaf_modules: Sequence[type] = (),
    pool_grid: int = 1,
) -> OFASModel:
    """Turn a ResNet into an OFAS model: one head after the stem gates every residual block.

    The residual blocks are found from the ``torch.fx`` graph (any torchvision, timm or hand-written
    ResNet); the stem is everything before the first block. ``model`` itself is **not changed**: the
    returned :class:`OFASModel` holds references to its submodules (no weight is copied), so training the
    OFAS model trains these weights in place, and ``unwrap()`` returns ``model``.

    Args:
        model: the backbone, an ``nn.Module`` whose forward takes one image tensor.
        variant: ``"I"`` (2 FC layers), ``"II"`` (3 FC layers) or ``"auto"`` (II for more than 50 layers).
        threshold: T of Eq. 1, in [0, 1); a gate opens when the head's output is >= T.
        gate_downsample: gate blocks with a projection shortcut too (skipped, they run only the projection);
            ``False`` keeps them always on.
        hidden_act: activation between the head's FC layers (``"none"`` as in the paper, or relu/gelu/silu).
        detach_input: stop gradients from the head into the stem (as in the paper's reference code).
        gate_bias_init: initial bias of the head's last FC (e.g. 2.0 opens every gate at first); ``None``
            keeps PyTorch's default initialisation.
        input_size: (channels, height, width) for shapes and FLOPs in ``model.plan``; defaults from timm's
            ``pretrained_cfg``, 32x32 for the CIFAR ResNets and 224x224 otherwise.
        leaf_modules: module classes ``torch.fx`` must not trace into (for code it cannot trace).
        pool_grid: the head average-pools the stem's output on a ``pool_grid`` x ``pool_grid`` grid (1, the
            paper's global pool; 2 gives the first FC 4x the inputs and the head some spatial layout).

    The settings are checked, and recorded in ``model.config``, as an :class:`ofas_wrap.OFASConfig`.

    Raises:
        TypeError / ValueError: bad arguments, before anything is traced.
        SurgeryError: no residual block, an untraceable module (named, with a hint), nesting the surgery
            cannot hold (residual additions written inline inside an outer shortcut, an outer shortcut that
            starts inside the stem; named, with what to write or pass instead).

    Where residuals are nested (a RoR stage, a long skip around a stage, a residual adapter), the innermost blocks
    are gated and the outer shortcuts stay ungated around them (``model.plan.outer_shortcuts``; docs/surgery.md).

    Example:
        >>> import torch, ofas_wrap
        >>> backbone = ofas_wrap.models.cifar_resnet(20).eval()
        >>> model = ofas_wrap.adaptify(backbone, variant="I", threshold=0.0).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> bool(torch.allclose(model(x), backbone(x), atol=1e-5)), model.num_gates
        (True, 9)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adaptify expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, OFASModel):
        raise TypeError("this model is already an OFASModel; call unwrap() first to adapt the plain backbone")
    adapted = OFASModel(*cut_backbone(
        model, variant=variant, threshold=threshold, gate_downsample=gate_downsample, hidden_act=hidden_act,
        detach_input=detach_input, gate_bias_init=gate_bias_init, input_size=input_size, leaf_modules=leaf_modules,
        pool_grid=pool_grid))
    adapted.train(model.training)
    return adapted


def _rebuild(config: dict[str, Any], config_path: Path, backbone: Optional[nn.Module],
             leaf_modules: Sequence[type], trust_remote_code: bool = False) -> Any:
    spec = config["backbone"]
    if backbone is None and spec is not None and spec.get("source") == FACTORY_SOURCE:
        if not trust_remote_code:
            raise CheckpointError(
                f"{config_path} rebuilds its backbone by running code ({spec['name']}); pass "
                "trust_remote_code=True (recipes and CLI: --trust-remote-code) if you trust that code, or build the "
                "backbone yourself and pass it: OFASModel.from_pretrained(path, backbone=MyResNet(...))"
            )
        try:
            backbone = build_from_factory(spec["name"], spec.get("kwargs") or {}, base_dir=config_path.parent)
        except ValueError as exc:
            raise CheckpointError(f"{config_path}: cannot rebuild the backbone from {spec['name']}: {exc}") from exc
    if backbone is None:
        if spec is None:
            raise CheckpointError(
                f"{config_path} records no backbone a registry can rebuild (it was made from "
                f"{config.get('backbone_class', 'a custom class')}); build that backbone yourself and pass it: "
                "OFASModel.from_pretrained(path, backbone=MyResNet(...))"
            )
        backbone = _build_backbone(spec, meta=False, config_path=config_path)
    else:
        if isinstance(backbone, OFASModel):
            raise TypeError("backbone= must be the plain backbone, not an OFASModel; pass model.unwrap()")
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone= must be a torch.nn.Module, got {type(backbone).__name__}")
        given = infer_backbone_spec(backbone) if spec is not None else None
        if given is not None and (given["source"], given["name"]) != (spec["source"], spec["name"]):
            raise CheckpointError(
                f"{config_path} is for backbone {spec['source']}:{spec['name']}, but backbone= is "
                f"{given['source']}:{given['name']}; pass a {spec['source']}:{spec['name']} or leave backbone= out"
            )
    ofas = config["ofas"]
    settings = OFASConfig.from_dict(ofas)
    model = adaptify(backbone, variant=settings.variant, threshold=0.0, gate_downsample=settings.gate_downsample,
                     hidden_act=settings.hidden_act, detach_input=settings.detach_input,
                     gate_bias_init=settings.gate_bias_init, input_size=settings.input_size,
                     leaf_modules=leaf_modules, pool_grid=settings.pool_grid)
    for key in ("blocks", "gated_blocks"):
        if list(model.config[key]) != list(ofas[key]):
            only_saved = [b for b in ofas[key] if b not in model.config[key]]
            only_model = [b for b in model.config[key] if b not in ofas[key]]
            raise CheckpointError(
                f"{config_path} is for another backbone: its {key} differ from the rebuilt model's "
                f"(only in the config: {only_saved or 'none'}; only in the model: {only_model or 'none'}"
                f"{'; same names in another order' if not only_saved and not only_model else ''})"
            )
    return model
