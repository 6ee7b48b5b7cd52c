"""The files of a saved OFAS model: ``model.safetensors`` + ``config.json`` + a ``README.md`` model card.

This module knows files, not models (as timm's ``_hub.py``): the ``config.json`` format and its checks, the
safetensors weights (a tensor shared under several names stored once), SHA-256 digests, atomic folder writes,
the Hugging Face Hub download, and the model card. It imports nothing that builds a model (no ``_model``,
``_surgery``, ``_factory`` or ``models``); :class:`ofas_wrap.OFASModel`'s ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` (``_model.py``, with ``_assembly.py``) call it. Loading never unpickles
anything: the weights come only from safetensors, the settings only from JSON.

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
from collections.abc import Container, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from ._config import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    ConfigFieldError,
    OFASConfig,
    check_threshold,
    read_document,
)
from ._version import __version__

__all__ = [
    "CheckpointError",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "read_config",
    "check_repo_id",
    "ignore_hub_card",
    "model_card",
    "base_model_id",
    "eval_results",
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


PathLike = Union[str, os.PathLike]


CARD_TAGS = ["ofas", "ofas-wrap", "adaptive-inference", "dynamic-depth", "resnet", "image-classification",
             "safetensors", "pytorch"]
# a depth-pruned network's card (save_pretrained(prune=...)): static, so not adaptive
PRUNED_DROPPED_TAGS = ("adaptive-inference", "dynamic-depth")
PRUNED_TAGS = ["depth-pruning"]
# what save_pretrained / push_to_hub accept besides the descriptions: the mixin's own arguments
PUSH_KWARGS = ("commit_message", "private", "token", "branch", "create_pr", "allow_patterns", "ignore_patterns",
               "delete_patterns", "revision")
CARD_KWARGS = ("model_name", "repo_id")


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
def read_config(path: PathLike, text: Optional[str] = None) -> dict[str, Any]:
    """Read and check an ofas-wrap config (``config.json`` or the one inside a TorchScript export): the document
    (:func:`read_document`), then every field a rebuild needs. Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    config = read_document(path, text)
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


def check_repo_id(repo_id: str) -> None:
    """Raise ValueError unless ``repo_id`` is a valid Hub model id (``name`` or ``namespace/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise ValueError(f"repo_id must be a string like 'your-name/model-name', got {type(repo_id).__name__}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {exc} Use 'your-name/model-name'.") from None


def ignore_hub_card(repo_id: str, *, token: Union[str, bool, None] = None, revision: Optional[str] = None,
                    allow_patterns: Union[list[str], str, None] = None,
                    ignore_patterns: Union[list[str], str, None] = None) -> Union[list[str], str, None]:
    """``ignore_patterns`` for an upload to ``repo_id`` that keeps a README.md the repo already has on ``revision``
    (a card someone edited on the Hub), as a local save keeps an edited README. Unchanged when the upload would not
    send README.md anyway, or when the repo or branch does not exist yet. A bare repo name is looked up in the
    token owner's namespace, where ``create_repo`` puts it."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    if not list(filter_repo_objects([CARD_NAME], allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)):
        return ignore_patterns
    api = huggingface_hub.HfApi(token=token)
    full_id = repo_id if "/" in repo_id else f"{api.whoami()['name']}/{repo_id}"
    if not api.file_exists(full_id, CARD_NAME, revision=revision):
        return ignore_patterns
    given = [] if ignore_patterns is None else [ignore_patterns] if isinstance(ignore_patterns, str) \
        else list(ignore_patterns)
    return [*given, CARD_NAME]


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


def save_model_aliases(metadata: dict[str, str], names: Iterable[str], stored: Container[str]) -> dict[str, str]:
    """The names ``safetensors.torch.save_model`` left out as shared, each -> the stored name holding its tensor.

    save_model records each dropped name as its own metadata entry (name -> kept name); ``names`` are the model's
    state names and ``stored`` the file's tensor names.
    """
    names = set(names)
    return {name: kept for name, kept in metadata.items() if name in names and name not in stored and kept in stored}


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
    aliases = {**save_model_aliases(metadata, state, shapes), **aliases}
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
    pruned = config.get("pruned")
    tags = list(CARD_TAGS) if not pruned else [t for t in CARD_TAGS if t not in PRUNED_DROPPED_TAGS] + PRUNED_TAGS
    if spec:
        tags.append(spec["source"])
    title = model_name or (f"OFAS-{ofas['variant']} {backbone}" if not pruned else
                           f"{backbone}, depth-pruned to {len(ofas['blocks']) - len(pruned['removed_blocks'])} "
                           f"of {len(ofas['blocks'])} blocks")
    results = eval_results(config)
    data = ModelCardData(library_name="ofas-wrap", tags=tags, datasets=list(config.get("datasets") or []) or None,
                         license=config.get("license"), pipeline_tag="image-classification",
                         base_model=base_model_id(spec), model_name=title if results else None,
                         eval_results=results or None)
    where = repo_id or "path/to/this/folder"
    if pruned:
        return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(_pruned_card_lines(config, title,
                                                                                                where))))
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
        lines += _outer_shortcut_lines(flops.get("outer_shortcuts") or [])
    lines += _input_lines(config)
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return str(ModelCard(content))


def _outer_shortcut_lines(outer: list[dict[str, Any]]) -> list[str]:
    """The card's table of outer shortcuts: residual additions around several gated blocks, not gated themselves."""
    if not outer:
        return []
    lines = ["Outer shortcuts (residual additions around several blocks, not gated: each adds its input back around "
             "the blocks it spans, run or skipped):", "",
             "| shortcut | kind | blocks |", "|---|---|---|"]
    lines += [f"| {o['module'] or 'forward'} ({o['add']}) | {o['shortcut']} | {o['blocks'][0]} .. {o['blocks'][-1]} |"
              for o in outer]
    return lines + [""]


def _pruned_card_lines(config: dict[str, Any], title: str, where: str) -> list[str]:
    """The description of a depth-pruned network's card (``save_pretrained(dir, prune=keep)``)."""
    spec, ofas, pruned = config.get("backbone"), config["ofas"], config["pruned"]
    backbone = f"{spec['source']}:{spec['name']}" if spec else config.get("backbone_class", "custom")
    removed = pruned["removed_blocks"]
    lines = [
        f"# {title}",
        "",
        f"A static {backbone} with {len(removed)} of its {len(ofas['blocks'])} residual blocks removed, made with "
        f"[ofas-wrap](https://pypi.org/project/ofas-wrap/) {config['ofas_wrap_version']} from an OFAS model with "
        "that skip pattern forced: a plain network of the backbone's own class, no head and no gates. A removed "
        "block with a projection shortcut keeps its projection only.",
        "",
        f"Removed blocks: {', '.join(removed) if removed else 'none'}.",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from ofas_wrap import OFASModel",
        "",
        f'network = OFASModel.from_pretrained("{where}"' + (")" if spec else ", backbone=MyResNet(...))")
        + "  # the pruned backbone, a plain nn.Module" + ("" if spec else " (MyResNet: your own backbone class)"),
        f"logits = network(torch.randn(1, {', '.join(str(s) for s in ofas['input_size'])}))",
        "```",
        "",
    ]
    flops, full = pruned.get("flops"), pruned.get("backbone_flops")
    if flops and full:
        size = "x".join(str(s) for s in ofas["input_size"])
        lines += ["## Compute", "",
                  f"{flops / 1e6:.2f} MFLOPs per {size} input, {flops / full:.2f}x the full backbone's "
                  f"{full / 1e6:.2f} (counted with `torch.utils.flop_counter`, FLOPs = 2 x multiply-adds).", ""]
    return lines + _input_lines(config)


def _input_lines(config: dict[str, Any]) -> list[str]:
    """The card's "Input" section: size, normalisation, classes."""
    lines = ["## Input", "", f"- size: {'x'.join(str(s) for s in config['ofas']['input_size'])} (channels x height x "
             "width)"]
    norm = config.get("normalization")
    if norm:
        lines.append(f"- normalisation: mean {_floats(norm['mean'])}, std {_floats(norm['std'])} "
                     "(of pixel values scaled to [0, 1])")
    names = config.get("class_names")
    if names:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20 else "")
        lines.append(f"- classes: {shown}")
    lines.append("")
    return lines


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
