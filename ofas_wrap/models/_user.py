"""A user's own model: a factory named by import path, and weights from a checkpoint file.

- ``path/to/resnet.py:resnet56`` or ``package.module:make_resnet``: a callable that returns the backbone, called
  with the user's keyword arguments (``--model-kwargs``). Naming it on the command line or in Python is the
  opt-in to run that code; a saved folder that records one runs it again only with ``trust_remote_code=True``
  (the flag the Hugging Face ecosystem uses for custom code).
- :func:`load_checkpoint_weights`: safetensors, or a PyTorch checkpoint read with ``torch.load(...,
  weights_only=True)`` (no object is ever unpickled); the usual wrappers (``state_dict`` / ``model`` keys, the
  ``module.`` prefix of ``DataParallel``) are unwrapped; strict, with an error listing every missing, unexpected
  and mis-shaped key before any weight is changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["FACTORY_SOURCE", "is_factory_spec", "split_factory_spec", "factory_kwargs", "load_factory",
           "build_from_factory", "load_checkpoint_weights", "read_checkpoint_state", "WeightsError"]

FACTORY_SOURCE = "factory"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REGISTRIES = ("cifar", "timm", "torchvision", "hf-hub", "hf_hub")


class WeightsError(ValueError):
    """A ``--weights`` / ``checkpoint_path`` file that cannot be read or does not fit the model."""


def is_factory_spec(spec: str) -> bool:
    """``FILE.py:NAME`` or ``package.module:NAME`` (a registry name such as ``cifar:resnet38`` is not).

    Example:
        >>> is_factory_spec("models/resnet.py:resnet56"), is_factory_spec("mypkg.nets:build")
        (True, True)
        >>> is_factory_spec("timm:resnet50")
        False
    """
    if not isinstance(spec, str) or ":" not in spec:
        return False
    module, _, name = spec.rpartition(":")
    if module.strip().lower() in _REGISTRIES or not name.isidentifier():
        return False
    return module.endswith(".py") or (_DOTTED.match(module) is not None and "." in module)


def split_factory_spec(spec: str, base_dir: Optional[Union[str, os.PathLike]] = None) -> tuple[str, str]:
    """``(module, factory)``; a ``.py`` path is made absolute (relative to ``base_dir``, else the working dir)."""
    module, _, name = spec.rpartition(":")
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or os.getcwd()) / path
        module = str(path.resolve())
    return module, name


def _import_file(path: Path):
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist; give --model PATH.py:FACTORY with an existing file")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"ofas_wrap_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ValueError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.parent))
    sys.modules[name] = module
    return module


def load_factory(module: str, name: str) -> Callable[..., nn.Module]:
    """The callable ``name`` of ``module`` (an absolute ``.py`` path or an importable dotted module)."""
    if module.endswith(".py"):
        mod = _import_file(Path(module))
    else:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"cannot import module {module!r} for --model {module}:{name}: {exc}; is it installed "
                             "or on PYTHONPATH? (a file is named as path/to/file.py:FACTORY)") from exc
    factory = getattr(mod, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_"))[:20]
        raise ValueError(f"{module} has no callable {name!r}; callables there: {', '.join(found) or 'none'}")
    return factory


def _accepts(factory: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == keyword for p in parameters)


def factory_kwargs(spec: str, kwargs: Optional[dict[str, Any]] = None, *, num_classes: Optional[int] = None,
                   in_chans: Optional[int] = None) -> dict[str, Any]:
    """``kwargs`` plus ``num_classes`` / ``in_chans``, each only where the factory's signature takes it."""
    factory = load_factory(*split_factory_spec(spec))
    kwargs = dict(kwargs or {})
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None and key not in kwargs and _accepts(factory, key):
            kwargs[key] = value
    return kwargs


def build_from_factory(spec: str, kwargs: Optional[dict[str, Any]] = None, *, num_classes: Optional[int] = None,
                       in_chans: Optional[int] = None, base_dir: Optional[Union[str, os.PathLike]] = None
                       ) -> nn.Module:
    """Call the factory with ``kwargs``; ``num_classes`` / ``in_chans`` only where its signature takes them."""
    module, name = split_factory_spec(spec, base_dir)
    factory = load_factory(module, name)
    kwargs = factory_kwargs(f"{module}:{name}", kwargs, num_classes=num_classes, in_chans=in_chans)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{module}:{name}(**{kwargs}) failed: {exc}; pass its arguments with --model-kwargs "
                         "(a JSON object)") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{module}:{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


# ---------------------------------------------------------------------------------------------- weights
def read_checkpoint_state(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """The state dict inside a weights file, unwrapped (``state_dict`` / ``model`` keys, ``module.`` prefix)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for objects, RuntimeError for a corrupt file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(
            f"{path} cannot be read as weights only ({type(exc).__name__}: {first[:300]}). ofas-wrap never unpickles "
            "objects from a checkpoint; save the state dict alone (torch.save(model.state_dict(), path)) or as "
            "safetensors") from exc
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{path} holds no state dict of tensors (found {keys}); expected a state dict, or one "
                           "under 'state_dict' or 'model'")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_checkpoint_weights(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> nn.Module:
    """Load a weights file into ``model``; every mismatch is listed before anything is changed."""
    state = read_checkpoint_state(path)
    own = model.state_dict()
    # checkpoints older than PyTorch 0.4.1 have no BatchNorm step counter; load_state_dict fills it in itself
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise WeightsError(f"{path} does not fit the model: {'; '.join(parts)}. Check --model / --model-kwargs "
                           "(num_classes, depth) against the checkpoint")
    model.load_state_dict(state, strict=strict)
    return model
