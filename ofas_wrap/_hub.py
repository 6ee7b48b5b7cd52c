"""Save, load and share OFAS models: ``model.safetensors`` + ``config.json`` + a ``README.md`` model card.

The folder written by :meth:`OFASHubMixin.save_pretrained` is what :meth:`OFASHubMixin.push_to_hub` uploads
and what :meth:`OFASHubMixin.from_pretrained` reads back, from disk or from the Hugging Face Hub. Loading
never unpickles anything: the weights come only from safetensors, the settings only from JSON.

Weight names are the backbone's own ``state_dict`` names under ``backbone.`` and the OFAS head's under
``head.`` (``backbone.layer1.0.conv1.weight``, ``head.fcs.0.weight``), so the file does not depend on how
adaptify() cut the backbone into stem, blocks and tail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Union

import torch
from huggingface_hub import ModelHubMixin
from torch import Tensor, nn

from ._config import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    ConfigFieldError,
    OFASConfig,
    check_threshold,
    float32_repr,
)
from ._version import __version__

__all__ = [
    "CheckpointError",
    "OFASHubMixin",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "infer_backbone_spec",
]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)

# the adaptify() settings a config must carry to rebuild the model: the fields of OFASConfig
OFAS_KEYS = OFASConfig.keys()
REQUIRED_KEYS = ("format", "format_version", "ofas_wrap_version", "backbone", "ofas")
# optional descriptions of the model, read from model.config and written to config.json and the card
METADATA_KEYS = ("class_names", "normalization", "datasets", "metrics", "license")
METRIC_COLUMNS = (("threshold", "threshold"), ("accuracy", "accuracy"), ("executed_blocks", "executed blocks"),
                  ("mflops", "MFLOPs"), ("latency_ms", "latency (ms)"), ("device", "device"))


class CheckpointError(ValueError):
    """A saved or exported OFAS model cannot be read: the message names the file, the problem and the fix."""


PathLike = Union[str, os.PathLike]


CARD_TAGS = ["ofas", "ofas-wrap", "adaptive-inference", "dynamic-depth", "resnet", "image-classification",
             "safetensors", "pytorch"]
# what save_pretrained / push_to_hub accept besides the descriptions: the mixin's own arguments
PUSH_KWARGS = ("commit_message", "private", "token", "branch", "create_pr", "allow_patterns", "ignore_patterns",
               "delete_patterns", "revision")
CARD_KWARGS = ("model_name", "repo_id")


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
                        **push_to_hub_kwargs: Any) -> Any:
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
        built = build_config(self, **overrides)
        users_card = _users_card(target)
        with _staging_folder(target) as staging:
            self._save_pretrained(staging, config=built, card_text=users_card, **card_kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id, config=overrides or None, model_card_kwargs=card_kwargs,
                                    **push_to_hub_kwargs)
        return target

    @torch.jit.unused
    def _save_pretrained(self, save_directory: Path, *, config: Optional[dict[str, Any]] = None,
                         card_text: Optional[str] = None, model_name: Optional[str] = None,
                         repo_id: Optional[str] = None) -> None:
        """The mixin's hook: write the model's three files (and a factory's ``.py`` file) into ``save_directory``.

        ``config`` is :func:`build_config`'s output (built from the model when None); ``card_text`` a README.md to
        keep instead of generating the card. :meth:`save_pretrained` calls this on its staging folder."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        _write_folder(self, build_config(self) if config is None else config, folder, model_name=model_name,
                      repo_id=repo_id, card_text=card_text)

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
        model = _rebuild(config, config_path, backbone, leaf_modules, trust_remote_code)
        if not isinstance(model, cls):
            raise TypeError(f"{cls.__name__}.from_pretrained built a {type(model).__name__}")
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
                    **save_kwargs: Any) -> Any:
        """Upload the ``save_pretrained`` folder to the Hub repo ``repo_id`` (created if missing), in one commit.

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
        return super().push_to_hub(
            repo_id, config=overrides or None, commit_message=commit_message, private=private, token=token,
            branch=branch, create_pr=create_pr, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
            delete_patterns=delete_patterns, model_card_kwargs=card_kwargs,
        )


def _metadata_overrides(config: Optional[dict[str, Any]], **given: Any) -> dict[str, Any]:
    """The descriptions for ``config.json`` and the card, from the keyword arguments and the ``config`` dict."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config= takes a dict of the descriptions {list(METADATA_KEYS)}, got "
                        f"{type(config).__name__}; the OFAS settings come from the model itself")
    unknown = sorted(str(key) for key in config if key not in METADATA_KEYS)
    if unknown:
        raise ValueError(f"config= has keys {unknown} that a save cannot set; it takes the descriptions "
                         f"{list(METADATA_KEYS)}, while the OFAS settings and the backbone come from the model "
                         "(change the model, e.g. model.threshold = 0.5)")
    overrides = {key: value for key, value in config.items() if value is not None}
    for key, value in given.items():
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise TypeError(f"{key} given twice, as {key}= and in config=, with different values; pass it once")
        overrides[key] = value
    return overrides


def _card_kwargs(model_card_kwargs: Optional[dict[str, Any]], model_name: Optional[str]) -> dict[str, Any]:
    card = dict(model_card_kwargs or {})
    unknown = sorted(str(key) for key in card if key not in CARD_KWARGS)
    if unknown:
        raise TypeError(f"model_card_kwargs has keys {unknown}; the card takes {list(CARD_KWARGS)} (its title and "
                        "the repo id its usage example loads)")
    if model_name is not None:
        if card.get("model_name") not in (None, model_name):
            raise TypeError("model_name given twice, as model_name= and in model_card_kwargs, with different values")
        card["model_name"] = model_name
    return {key: value for key, value in card.items() if value is not None}


# ---------------------------------------------------------------------------------------------- config
def build_config(model: Any, **overrides: Any) -> dict[str, Any]:
    """The ``config.json`` of ``model``: backbone spec, OFAS settings, metadata, FLOPs; validated."""
    ofas = {key: model.config.get(key) for key in OFAS_KEYS if key in model.config
            or key not in OFASConfig.OPTIONAL_KEYS}
    ofas["threshold"] = float32_repr(model.threshold)
    missing = [key for key in ("variant", "input_size", "gated_blocks", "blocks") if ofas[key] is None]
    if missing:
        raise ValueError(f"model.config lacks {missing}; build the model with ofas_wrap.adaptify or create_model")
    backbone = model.unwrap()
    spec = model.config.get("backbone") or infer_backbone_spec(backbone)
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "ofas_wrap_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "architecture": "OFASModel",
        "backbone": _jsonable(spec) if spec else None,
        "backbone_class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
        "ofas": ofas,
        "num_gates": model.num_gates,
    }
    for key in METADATA_KEYS:
        value = overrides.get(key)
        config[key] = value if value is not None else model.config.get(key)
    if config["normalization"] is None:
        config["normalization"] = _timm_normalization(backbone)
    spec_kwargs = _jsonable(spec)["kwargs"] if spec else {}
    num_classes = spec_kwargs.get("num_classes", getattr(backbone, "num_classes", None))
    _validate_metadata(config, num_classes if isinstance(num_classes, int) else None)
    config["flops"] = _flops_summary(model)
    return json.loads(json.dumps(config))  # plain JSON types only (tuples -> lists), fails early if not JSON


def read_config(path: PathLike, text: Optional[str] = None) -> dict[str, Any]:
    """Read and check an ofas-wrap config (``config.json`` or the one inside a TorchScript export)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is damaged, save the model again") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") not in (None, FORMAT_NAME):
        raise CheckpointError(f"{path}: format {config.get('format')!r} is not an ofas-wrap model config")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    ofas = config.get("ofas")
    if isinstance(ofas, dict):
        missing += [f"ofas.{key}" for key in OFAS_KEYS if key not in ofas and key not in OFASConfig.OPTIONAL_KEYS]
    elif "ofas" in config:
        raise CheckpointError(f"{path}: 'ofas' must be an object with the adaptify settings, got {ofas!r}")
    if missing:
        raise CheckpointError(
            f"{path}: missing fields {missing}; this is not a complete ofas-wrap config (save the model again "
            "with save_pretrained / export_torchscript)"
        )
    version = config["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by ofas-wrap {config.get('ofas_wrap_version')} in format version {version}, but "
            f"this ofas-wrap {__version__} reads format versions up to {FORMAT_VERSION}; upgrade it "
            "(pip install -U ofas-wrap)"
        )
    backbone = config["backbone"]
    if backbone is not None and not (isinstance(backbone, dict) and {"source", "name"} <= set(backbone)):
        raise CheckpointError(f"{path}: 'backbone' must be null or {{'source', 'name', 'kwargs'}}, got {backbone!r}")
    _check_config_values(path, config)
    return config


# the largest values a config may ask for: beyond them building the model would allocate absurd memory
MAX_INPUT_SIDE = 8192
MAX_INPUT_CHANNELS = 64
MAX_NUM_CLASSES = 1_000_000


def _check_config_values(path: Path, config: dict[str, Any]) -> None:
    """Types and ranges of the settings a rebuild uses, each error naming the file and the field."""

    ofas = config["ofas"]
    unknown = sorted(str(key) for key in ofas if key not in OFAS_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown fields {[f'ofas.{key}' for key in unknown]}; this ofas-wrap "
                              f"{__version__} knows {list(OFAS_KEYS)} (upgrade it if a newer version wrote the file)")
    # JSON has lists, never tuples; anything else is a damaged or hand-edited file
    for field in ("input_size", "blocks", "gated_blocks"):
        if not isinstance(ofas[field], list):
            raise CheckpointError(f"{path}: field 'ofas.{field}' must be a list, got {ofas[field]!r}")
    try:
        OFASConfig.from_dict(ofas)
    except ConfigFieldError as exc:
        raise CheckpointError(f"{path}: field 'ofas.{exc.field}': {exc}") from None
    size = ofas["input_size"]
    if not (size[0] <= MAX_INPUT_CHANNELS and all(v <= MAX_INPUT_SIDE for v in size[1:])):
        raise CheckpointError(f"{path}: field 'ofas.input_size' must be [channels <= {MAX_INPUT_CHANNELS}, height, "
                              f"width <= {MAX_INPUT_SIDE}], got {size!r}; building such a model would allocate "
                              "absurd memory")
    kwargs = (config["backbone"] or {}).get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: field 'backbone.kwargs' must be an object, got {kwargs!r}")
    classes = kwargs.get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int)
                                or not 1 <= classes <= MAX_NUM_CLASSES):
        raise CheckpointError(f"{path}: field 'backbone.kwargs.num_classes' must be an integer in [1, "
                              f"{MAX_NUM_CLASSES}], got {classes!r}")


def infer_backbone_spec(backbone: nn.Module) -> Optional[dict[str, Any]]:
    """How a registry can rebuild ``backbone``: ``{"source", "name", "kwargs"}``, or None if it cannot.

    Recognises the CIFAR ResNets, timm models (``pretrained_cfg["architecture"]``) and torchvision ResNets;
    a candidate counts only if a freshly built one has exactly the same weight names and shapes.

    Example:
        >>> from ofas_wrap.models import cifar_resnet
        >>> infer_backbone_spec(cifar_resnet(14, num_classes=5))
        {'source': 'cifar', 'name': 'resnet14', 'kwargs': {'num_classes': 5, 'in_chans': 3}}
    """
    from .models import CifarResNet

    candidates: list[dict[str, Any]] = []
    module_name = type(backbone).__module__
    if type(backbone) is CifarResNet:
        candidates.append({"source": "cifar", "name": f"resnet{backbone.depth}",
                           "kwargs": {"num_classes": backbone.num_classes, "in_chans": backbone.in_chans}})
    elif module_name.startswith("timm."):
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        architecture = cfg.get("architecture")
        if architecture:
            kwargs = {"in_chans": _in_channels(backbone)}
            if isinstance(getattr(backbone, "num_classes", None), int):
                kwargs["num_classes"] = backbone.num_classes
            candidates.append({"source": "timm", "name": architecture, "kwargs": kwargs})
    elif module_name.startswith("torchvision.models") and type(backbone).__name__ == "ResNet":
        fc = getattr(backbone, "fc", None)
        kwargs = {"num_classes": fc.out_features} if isinstance(fc, nn.Linear) else {}
        for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"):
            candidates.append({"source": "torchvision", "name": name, "kwargs": dict(kwargs)})
    expected = _shapes(backbone.state_dict())
    for candidate in candidates:
        rebuilt = _build_backbone(candidate, meta=True)
        if rebuilt is not None and _shapes(rebuilt.state_dict()) == expected:
            return candidate
    return None


def check_repo_id(repo_id: str) -> None:
    """Raise ValueError unless ``repo_id`` is a valid Hub model id (``name`` or ``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a string like 'your-name/model-name', got {type(repo_id).__name__}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {exc} Use 'your-name/model-name'.") from None


# --------------------------------------------------------------------------------------------- writing
def _users_card(target: Path) -> Optional[str]:
    """The README.md of ``target`` when the user wrote or edited it (it is not the card our last save wrote, whose
    SHA-256 ``config.json`` records): a save keeps it, as the Hub mixin and timm never overwrite a README."""
    card, config = target / CARD_NAME, target / CONFIG_NAME
    if not card.is_file():
        return None
    recorded = None
    if config.is_file():
        try:
            recorded = json.loads(config.read_text(encoding="utf-8")).get("card_sha256")
        except (ValueError, UnicodeDecodeError, AttributeError):
            recorded = None
    return None if recorded == _sha256(card) else card.read_text(encoding="utf-8")


def _write_folder(model: Any, config: dict[str, Any], folder: Path, model_name: Optional[str],
                  repo_id: Optional[str], card_text: Optional[str] = None) -> None:
    config = _bundle_factory_code(config, folder)
    weights, aliases = _weights_to_save(model)
    weights_path = folder / WEIGHTS_NAME
    _save_safetensors(weights, weights_path, metadata={
        "format": "pt", "ofas_wrap_version": __version__, "aliases": json.dumps(aliases, sort_keys=True),
    })
    config = dict(config, weights_sha256=_sha256(weights_path))
    if card_text is None:  # our card, recorded so that a later save can tell a user's edit from it
        _write_text(folder / CARD_NAME, model_card(config, model_name=model_name, repo_id=repo_id))
        config["card_sha256"] = _sha256(folder / CARD_NAME)
    else:
        _write_text(folder / CARD_NAME, card_text)
        config["card_sha256"] = None
    _write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")


def _bundle_factory_code(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A backbone built by a factory in a ``.py`` file: copy the file into the folder and record it relative to
    the folder (as the Hub keeps custom code beside the weights), so the folder rebuilds anywhere."""
    from .models._user import FACTORY_SOURCE, split_factory_spec

    spec = config.get("backbone")
    if not spec or spec.get("source") != FACTORY_SOURCE:
        return config
    module, name = split_factory_spec(spec["name"])
    if not module.endswith(".py"):
        return config  # an importable module: the import path is the record
    source = Path(module)
    if not source.is_file():
        raise FileNotFoundError(f"the backbone's code {source} is gone; it is needed to save the model")
    _write_text(folder / source.name, source.read_text())
    return dict(config, backbone=dict(spec, name=f"{source.name}:{name}"))


def _save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    _fsync(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def _staging_folder(target: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``target``; on success it replaces ``target`` by renames."""
    if target.is_symlink():  # replace the real folder and keep the link: never move files out of it
        target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):  # leftovers of saves a kill interrupted
        for stale in target.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes it private; the saved folder gets normal permissions
    try:
        yield staging
        if not target.exists():
            os.rename(staging, target)
            return
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(backup)
        os.rename(target, backup)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(backup, target)
            raise
        for entry in backup.iterdir():  # keep the user's other files (what this save wrote is newer)
            if entry.name not in MODEL_FILES and not (target / entry.name).exists():
                os.rename(entry, target / entry.name)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _weights_to_save(model: Any) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Backbone and head tensors; a tensor shared under several names is stored once (``aliases``).

    ``safetensors.torch.save_model`` does not replace this: for a model without shared tensors it writes the same
    bytes, but for shared ones it keeps the alphabetically first name (not the first in ``state_dict`` order),
    records each alias as its own metadata entry instead of the ``aliases`` JSON that ofas-wrap 0.1.0 reads, and
    refuses tensors that are partial views of one storage (stored here as copies). :func:`_load_weights` reads
    its files too, and ``safetensors.torch.load_model`` reads these.
    """
    state = _named_state(model)
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and identity in seen:
            aliases[name] = seen[identity]
            continue
        seen[identity] = name
        pointer = tensor.untyped_storage().data_ptr()
        tensor = tensor.to("cpu").contiguous()
        if pointer and pointer in storages:  # a view into a storage already stored: store a copy
            tensor = tensor.clone()
        storages.add(pointer)
        kept[name] = tensor
    _check_everything_saved(model, state)
    return kept, aliases


def _named_state(model: Any) -> dict[str, Tensor]:
    state = {f"backbone.{k}": v for k, v in model.unwrap().state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    return state


def _check_everything_saved(model: Any, state: dict[str, Tensor]) -> None:
    """Every weight of the OFAS model must be one of the backbone's or the head's (they are shared)."""
    saved = {t.untyped_storage().data_ptr() for t in state.values() if t.numel()}
    lost = [name for name, t in model.state_dict().items()
            if name != "gate_threshold" and t.numel() and t.untyped_storage().data_ptr() not in saved]
    if lost:
        raise RuntimeError(
            f"these weights of the OFAS model are neither the backbone's nor the head's and would not be saved: "
            f"{lost[:10]}; adapt the backbone again with ofas_wrap.adaptify instead of replacing submodules"
        )


# --------------------------------------------------------------------------------------------- loading
def _resolve_folder(dir_or_repo_id: PathLike, *, revision: Optional[str], token: Union[str, bool, None],
                    cache_dir: Optional[PathLike], local_files_only: bool, force_download: bool = False) -> Path:
    path = Path(dir_or_repo_id)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; from_pretrained expects the folder written by save_pretrained")
    name = str(dir_or_repo_id)
    try:
        check_repo_id(name)
    except ValueError:
        raise FileNotFoundError(
            f"{name!r} is neither an existing folder nor a valid Hub repo id ('namespace/name'); check the path"
        ) from None
    from huggingface_hub import snapshot_download

    # *.py: a factory backbone's code, kept beside the weights (run only with trust_remote_code=True)
    try:
        return Path(snapshot_download(
            name, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=[*MODEL_FILES, "*.py"], library_name="ofas-wrap", library_version=__version__,
        ))
    except Exception as exc:  # offline, unknown repo, gated/private repo, network failure
        raise CheckpointError(
            f"{name!r} is not a local folder, and the Hugging Face Hub could not provide a repo of that name: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} -- check the spelling, your "
            "network, HF_HUB_OFFLINE (offline mode only finds repos already in the cache) and, for a private "
            "repo, the token"
        ) from exc


def _absolute_factory(spec: Optional[dict[str, Any]], folder: Path) -> Optional[dict[str, Any]]:
    from .models._user import FACTORY_SOURCE, split_factory_spec

    if not spec or spec.get("source") != FACTORY_SOURCE:
        return spec
    module, name = split_factory_spec(spec["name"], base_dir=folder)
    return dict(spec, name=f"{module}:{name}")


def _rebuild(config: dict[str, Any], config_path: Path, backbone: Optional[nn.Module],
             leaf_modules: Sequence[type], trust_remote_code: bool = False) -> Any:
    from ._model import OFASModel
    from ._surgery import adaptify
    from .models._user import FACTORY_SOURCE, build_from_factory

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


def _build_backbone(spec: dict[str, Any], meta: bool, config_path: Optional[Path] = None) -> Optional[nn.Module]:
    from .models import BackboneSpec, create_backbone

    parsed = BackboneSpec(str(spec["source"]), str(spec["name"]), dict(spec.get("kwargs") or {}))
    if meta:
        try:
            with torch.device("meta"):
                return create_backbone(parsed)
        except Exception:
            return None
    try:
        return create_backbone(parsed)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: cannot rebuild backbone {parsed} {parsed.kwargs}: {exc}") from exc


def _load_weights(model: Any, path: Path, config: dict[str, Any]) -> None:
    """Check the file against the model (names, shapes), then load; nothing is loaded if anything is off."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    expected_hash = config.get("weights_sha256")
    if expected_hash and _sha256(path) != expected_hash:
        raise CheckpointError(
            f"{path} does not match {CONFIG_NAME} (its SHA-256 differs from weights_sha256): the file is corrupted "
            "or comes from another save; save the model again or re-download it"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({exc}); it is truncated or corrupted, save the model again or "
            "re-download it"
        ) from None
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the 'aliases' metadata is not JSON; the file is damaged") from None
    state = _named_state(model)
    # safetensors.torch.save_model records each dropped shared name as its own metadata entry (name -> kept name)
    aliases.update({name: kept for name, kept in metadata.items()
                    if name in state and name not in shapes and name not in aliases and kept in shapes})
    missing, mismatched = [], []
    for name, tensor in state.items():
        stored = name if name in shapes else aliases.get(name)
        if stored not in shapes:
            missing.append(name)
        elif shapes[stored] != tuple(tensor.shape):
            mismatched.append(f"{name}: file {list(shapes[stored])} vs model {list(tensor.shape)}")
    unexpected = sorted(set(shapes) - set(state))
    problems = []
    if missing:
        problems.append(f"missing weights ({len(missing)}): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected weights ({len(unexpected)}): {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_names(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit the model built from {CONFIG_NAME}: " + "; ".join(problems)
            + ". Was it saved from another backbone, or with other num_classes / in_chans?"
        )
    full = {name: tensors[name if name in tensors else aliases[name]] for name in state}
    backbone_state = {k.removeprefix("backbone."): v for k, v in full.items() if k.startswith("backbone.")}
    head_state = {k.removeprefix("head."): v for k, v in full.items() if k.startswith("head.")}
    model.unwrap().load_state_dict(backbone_state, strict=True)
    model.head.load_state_dict(head_state, strict=True)


# ---------------------------------------------------------------------------------------------- the card
def model_card(config: dict[str, Any], model_name: Optional[str] = None, repo_id: Optional[str] = None) -> str:
    """The ``README.md`` text: Hub metadata header (library, tags, datasets, license) and a description."""
    from huggingface_hub import ModelCard, ModelCardData

    spec = config.get("backbone")
    backbone = f"{spec['source']}:{spec['name']}" if spec else config.get("backbone_class", "custom")
    ofas = config["ofas"]
    tags = list(CARD_TAGS)
    if spec:
        tags.append(spec["source"])
    title = model_name or f"OFAS-{ofas['variant']} {backbone}"
    results = eval_results(config)
    data = ModelCardData(library_name="ofas-wrap", tags=tags, datasets=list(config.get("datasets") or []) or None,
                         license=config.get("license"), pipeline_tag="image-classification",
                         base_model=base_model_id(spec), model_name=title if results else None,
                         eval_results=results or None)
    where = repo_id or "path/to/this/folder"
    lines = [
        f"# {title}",
        "",
        f"An input-adaptive {backbone} made with [ofas-wrap](https://pypi.org/project/ofas-wrap/) "
        f"{config['ofas_wrap_version']}: an OFAS-{ofas['variant']} head after the stem decides, for each input, "
        f"which of the {len(ofas['gated_blocks'])} gated residual blocks (of {len(ofas['blocks'])}) to skip "
        "(Once For All Skip). A skipped block is not computed; its shortcut runs instead.",
        "",
        f"The threshold T = {ofas['threshold']:g} is the accuracy/latency knob: a block runs when its gate "
        "output is >= T, so T = 0 runs every block and a higher T skips more.",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from ofas_wrap import OFASModel",
        "",
        f'model = OFASModel.from_pretrained("{where}"'
        + (")" if spec else ", backbone=MyResNet(...))  # your own backbone class"),
        "model.threshold = 0.5  # in [0, 1): higher skips more blocks",
        f"logits = model(torch.randn(1, {', '.join(str(s) for s in ofas['input_size'])}))",
        "print(model.last_gates)  # which blocks ran",
        "```",
        "",
    ]
    metrics = config.get("metrics") or []
    if metrics:
        columns = [(key, label) for key, label in METRIC_COLUMNS if any(key in row for row in metrics)]
        lines += ["## Accuracy, executed blocks and latency per threshold", "",
                  "| " + " | ".join(label for _, label in columns) + " |",
                  "|" + "|".join("---" for _ in columns) + "|"]
        for row in metrics:
            lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
        lines.append("")
    flops = config.get("flops")
    if flops:
        size = "x".join(str(s) for s in flops["input_size"])
        lines += [
            "## Compute",
            "",
            f"{flops['total'] / 1e6:.2f} MFLOPs per {size} input with every block executed (counted with "
            f"`torch.utils.flop_counter`, FLOPs = 2 x multiply-adds; the OFAS head adds {flops['head'] / 1e6:.3f}). "
            "Per gated block:",
            "",
            "| block | MFLOPs when run | MFLOPs when skipped |",
            "|---|---|---|",
        ]
        lines += [f"| {b['name']} | {b['flops'] / 1e6:.2f} | {b['skip_flops'] / 1e6:.2f} |"
                  for b in flops["blocks"] if b["gated"]]
        lines.append("")
    lines += ["## Input", "", f"- size: {'x'.join(str(s) for s in ofas['input_size'])} (channels x height x width)"]
    norm = config.get("normalization")
    if norm:
        lines.append(f"- normalisation: mean {_floats(norm['mean'])}, std {_floats(norm['std'])} "
                     "(of pixel values scaled to [0, 1])")
    names = config.get("class_names")
    if names:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
        lines.append(f"- classes: {shown}")
    lines.append("")
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return str(ModelCard(content))


def base_model_id(spec: Optional[dict[str, Any]]) -> Optional[str]:
    """The Hub id of the backbone's weights for the card's ``base_model``, or None when it is not known.

    Only a timm name with a pretrained tag names one set of weights (``timm:resnet18.a1_in1k`` ->
    ``timm/resnet18.a1_in1k``; ``hf-hub:user/name`` -> ``user/name``); an untagged name, torchvision, the CIFAR
    ResNets and a user's own backbone have none.

    Example:
        >>> base_model_id({"source": "timm", "name": "resnet18.a1_in1k", "kwargs": {}})
        'timm/resnet18.a1_in1k'
        >>> base_model_id({"source": "timm", "name": "resnet18", "kwargs": {}}) is None
        True
    """
    if not spec or spec.get("source") != "timm" or not isinstance(spec.get("name"), str):
        return None
    name = spec["name"]
    if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
        repo_id = name.split(":", 1)[1]
    elif "." in name and "/" not in name:
        repo_id = f"timm/{name}"
    else:
        return None
    try:
        check_repo_id(repo_id)
    except ValueError:
        return None
    return repo_id


def eval_results(config: dict[str, Any]) -> list[Any]:
    """One ``huggingface_hub.EvalResult`` per metrics row with an accuracy: the accuracy at that row's threshold T
    (``metric_name`` "accuracy at T = 0.6", ``metric_args`` ``{"threshold": 0.6}``), on the first recorded dataset."""
    from huggingface_hub import EvalResult

    datasets = config.get("datasets") or []
    dataset = datasets[0] if datasets else "custom"
    results = []
    for row in config.get("metrics") or []:
        accuracy = row.get("accuracy")
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy):
            continue
        threshold = float(row["threshold"])
        results.append(EvalResult(
            task_type="image-classification", task_name="Image Classification", dataset_type=dataset,
            dataset_name=dataset, metric_type="accuracy", metric_value=float(accuracy),
            metric_name=f"accuracy at T = {threshold:g}", metric_args={"threshold": threshold},
        ))
    return results


# -------------------------------------------------------------------------------------------- helpers
def _validate_metadata(config: dict[str, Any], num_classes: Optional[int]) -> None:
    names = config["class_names"]
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names must be a list of strings, got {names!r}")
        config["class_names"] = list(names)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"{len(names)} class_names for a backbone with num_classes={num_classes}")
    norm = config["normalization"]
    if norm is not None:
        channels = config["ofas"]["input_size"][0]
        ok = isinstance(norm, dict) and all(
            isinstance(norm.get(k), (list, tuple)) and len(norm[k]) == channels
            and all(isinstance(v, (int, float)) for v in norm[k]) for k in ("mean", "std"))
        if not ok:
            raise ValueError(f"normalization must be {{'mean': [{channels} floats], 'std': [{channels} floats]}}, "
                             f"got {norm!r}")
        config["normalization"] = {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
    datasets = config["datasets"]
    if datasets is not None:
        if isinstance(datasets, str):
            datasets = [datasets]
        if not all(isinstance(d, str) for d in datasets):
            raise ValueError(f"datasets must be a list of Hub dataset ids, got {datasets!r}")
        config["datasets"] = list(datasets)
    metrics = config["metrics"]
    if metrics is not None:
        for row in metrics:
            if not isinstance(row, dict):
                raise ValueError(f"each metrics row must be a dict with a 'threshold' in [0, 1), got {row!r}")
            check_threshold(row.get("threshold"), f"the 'threshold' of metrics row {row!r}")
        config["metrics"] = [dict(row) for row in metrics]
    if config["license"] is not None and not isinstance(config["license"], str):
        raise ValueError(f"license must be a string such as 'apache-2.0', got {config['license']!r}")


def _flops_summary(model: Any) -> Optional[dict[str, Any]]:
    plan = getattr(model, "plan", None)
    if plan is None:
        return None
    return {
        "input_size": list(plan.input_size),
        "total": int(plan.total_flops),
        "backbone": int(plan.backbone_flops),
        "head": int(plan.head_flops),
        "fixed": int(plan.stem_flops + plan.head_flops + plan.tail_flops),
        "blocks": [{"name": b.name, "gated": b.gated, "gate_index": b.gate_index, "flops": int(b.flops),
                    "skip_flops": int(b.skip_flops)} for b in plan],
    }


def _timm_normalization(backbone: nn.Module) -> Optional[dict[str, list[float]]]:
    cfg = getattr(backbone, "pretrained_cfg", None)
    if not type(backbone).__module__.startswith("timm.") or not isinstance(cfg, dict):
        return None
    mean, std = cfg.get("mean"), cfg.get("std")
    channels = _in_channels(backbone)
    if mean and std and len(mean) == len(std) == channels:
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return None


def _in_channels(module: nn.Module) -> int:
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    return 3


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _jsonable(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        spec = {"source": spec.source, "name": spec.name, "kwargs": spec.kwargs}
    return {"source": spec["source"], "name": spec["name"], "kwargs": dict(spec.get("kwargs") or {})}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _names(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _floats(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
