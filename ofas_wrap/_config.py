"""OFASConfig: the one place for the OFAS head settings, their choices and their checks.

``adaptify`` builds one from its arguments, ``config.json`` stores it as its ``"ofas"`` section, the recipes'
and the CLI's flags take their choices from it, and :func:`check_threshold` is the one check of T (Eq. 1).
This module is the bottom layer of the package: it imports nothing else from ``ofas_wrap`` but the atomic file
write (``_atomic``, which imports nothing from it).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch

from ._atomic import write_atomic
from ._version import __version__

__all__ = ["OFASConfig", "ConfigFieldError", "CheckpointError", "check_threshold", "read_document", "FORMAT_NAME",
           "FORMAT_VERSION", "CONFIG_NAME", "ONNX_CONFIG_KEY", "ONNX_THRESHOLD_NAME",
           "DEFAULT_CALIBRATION_IMAGES"]

FORMAT_NAME = "ofas-wrap"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
# an export_onnx file: the metadata_props key holding the config JSON, and the initializer holding T (here, below
# _export and _quantize, which both read them)
ONNX_CONFIG_KEY = "ofas_config"
ONNX_THRESHOLD_NAME = "model.gate_threshold"
DEFAULT_CALIBRATION_IMAGES = 256  # INT8: the training images `ofas-wrap export --int8` and evaluate calibrate on

PathLike = Union[str, os.PathLike]


class ConfigFieldError(ValueError):
    """A setting of :class:`OFASConfig` has a wrong value; ``field`` and ``value`` say which, the message the fix."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class CheckpointError(ValueError):
    """A saved or exported OFAS model cannot be read: the message names the file, the problem and the fix."""


def check_threshold(value: Any, what: str = "threshold", dtype: torch.dtype = torch.float32) -> float:
    """``float(value)`` if it is a valid T of Eq. 1: a number in [0, 1), also once stored as ``dtype``.

    Every place that takes a threshold (``adaptify``, ``model.threshold = T``, ``from_pretrained``, a saved
    config, the CLI and the recipes' flags) checks it here. ``what`` names the value in the message (a flag such
    as ``"--threshold"``). Raises ValueError naming ``what``, the value and the fix.

    Example:
        >>> check_threshold(0.5)
        0.5
        >>> check_threshold(1.0, "--threshold")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --threshold must be a number in [0, 1) (T of Eq. 1: ...), got 1.0; use e.g. 0.5, or 0 to run ...
    """
    number = None
    if not isinstance(value, (bool, str, bytes)) and value is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or not 0.0 <= number < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1) (T of Eq. 1: a block runs when its gate output is >= T), "
                         f"got {value!r}; use e.g. 0.5, or 0 to run every block")
    stored = float(torch.tensor(number, dtype=dtype))
    if stored >= 1.0:  # what is stored counts, not what was passed: 0.999999999 is 1.0 in float32
        raise ValueError(f"{what} must stay below 1 once stored as {dtype}, but {value!r} rounds to {stored}; "
                         "use a value such as 0.9999")
    return number


def float32_repr(value: float) -> float:
    """The shortest decimal that is the same float32 (the threshold buffer): 0.3, not 0.30000001192092896."""
    exact = torch.tensor(float(value), dtype=torch.float32)
    for digits in range(1, 10):
        short = float(f"{float(value):.{digits}g}")
        if torch.tensor(short, dtype=torch.float32) == exact:
            return short
    return float(value)


@dataclass
class OFASConfig:
    """The settings of an OFAS head, validated on construction (as PEFT's ``LoraConfig``).

    The first seven fields are :func:`ofas_wrap.adaptify`'s arguments (same names, defaults and meaning);
    ``gated_blocks`` and ``blocks`` are filled in by the surgery: the names of the gated residual blocks and of all
    of them, in order. A built model's config (``blocks`` set) records the resolved variant, ``"I"`` or ``"II"``,
    and its ``input_size``. ``to_dict()`` is the ``"ofas"`` section of ``config.json``.

    Example:
        >>> from ofas_wrap import OFASConfig
        >>> config = OFASConfig(variant="I", threshold=0.3)
        >>> OFASConfig.from_dict(config.to_dict()) == config
        True
        >>> OFASConfig(hidden_act="tanh")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ofas_wrap._config.ConfigFieldError: hidden_act must be one of 'none', 'relu', 'gelu', 'silu', got 'tanh'; ...
    """

    VARIANTS: ClassVar[tuple[str, ...]] = ("I", "II", "auto")
    RESOLVED_VARIANTS: ClassVar[tuple[str, ...]] = ("I", "II")
    HIDDEN_ACTS: ClassVar[tuple[str, ...]] = ("none", "relu", "gelu", "silu")
    # added after format version 1: a config may lack them, and to_dict() leaves them out at their default, so a
    # paper-head config reads and writes exactly as before
    OPTIONAL_KEYS: ClassVar[tuple[str, ...]] = ("pool_grid",)

    variant: str = "auto"
    threshold: float = 0.5
    gate_downsample: bool = True
    hidden_act: str = "none"
    detach_input: bool = True
    gate_bias_init: Optional[float] = None
    input_size: Optional[tuple[int, int, int]] = None
    gated_blocks: Optional[tuple[str, ...]] = None
    blocks: Optional[tuple[str, ...]] = None
    pool_grid: int = 1

    def __post_init__(self) -> None:
        def fail(field: str, expected: str, fix: str) -> None:
            value = getattr(self, field)
            raise ConfigFieldError(field, value, f"{field} must be {expected}, got {value!r}; {fix}")

        if self.variant not in self.VARIANTS:
            fail("variant", "one of " + _listed(self.VARIANTS),
                 "'I' is OFAS-I (2 FC layers), 'II' OFAS-II (3 FC), 'auto' picks II above 50 layers")
        try:
            self.threshold = check_threshold(self.threshold)
        except ValueError as exc:
            raise ConfigFieldError("threshold", self.threshold, str(exc)) from None
        for field in ("gate_downsample", "detach_input"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "True or False", f"pass a bool ({field}=True is the default)")
        if self.hidden_act not in self.HIDDEN_ACTS:
            fail("hidden_act", "one of " + _listed(self.HIDDEN_ACTS),
                 "pick one of these (adaptify(hidden_act=...), --hidden-act)")
        bias = self.gate_bias_init
        if bias is not None:
            if isinstance(bias, bool) or not isinstance(bias, numbers.Real) or not math.isfinite(bias):
                fail("gate_bias_init", "None or a finite number",
                     "e.g. 2.0 opens every gate at first; None keeps PyTorch's initialisation")
        if self.input_size is not None:
            size = self.input_size
            if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 3 or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in size):
                fail("input_size", "(channels, height, width) of positive integers, or None",
                     "e.g. (3, 32, 32); None takes the backbone's own size")
            self.input_size = tuple(int(v) for v in size)
        for field in ("gated_blocks", "blocks"):
            names = getattr(self, field)
            if names is not None:
                if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__") or not all(
                        isinstance(v, str) for v in names):
                    fail(field, "a list of block names or None", "adaptify fills it in from the backbone")
                setattr(self, field, tuple(names))
        grid = self.pool_grid
        if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or not 1 <= grid <= 8:
            fail("pool_grid", "an integer from 1 to 8",
                 "1 is the paper's head (global average pool of the stem); 2 pools a 2x2 grid (4x the inputs)")
        self.pool_grid = int(grid)
        if (self.blocks is None) != (self.gated_blocks is None):
            fail("gated_blocks", f"given together with blocks (blocks is {self.blocks!r})",
                 "both come from the surgery: take them from a saved config, or leave both out")
        if self.blocks is not None:
            stray = [name for name in self.gated_blocks if name not in self.blocks]
            if stray:
                fail("gated_blocks", f"a subset of blocks, but {stray} are not in blocks",
                     "take both from the same saved config")
            if self.variant not in self.RESOLVED_VARIANTS:
                fail("variant", f"{_listed(self.RESOLVED_VARIANTS, 'or')} in a built model's config (blocks given)",
                     "adaptify resolves 'auto' by depth; record the variant it chose (model.config['variant'])")
            if self.input_size is None:
                fail("input_size", "(channels, height, width) in a built model's config (blocks given)",
                     "record the size the surgery profiled (model.config['input_size'])")

    # ------------------------------------------------------------------------------------ dict and JSON
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The field names, in the order of ``config.json``'s ``"ofas"`` section."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), in field order: the ``"ofas"`` section of ``config.json``."""
        out: dict[str, Any] = {}
        defaults = OFASConfig()
        for key in self.keys():
            value = getattr(self, key)
            if key in self.OPTIONAL_KEYS and value == getattr(defaults, key):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OFASConfig:
        """Build and check a config from a dict such as ``config.json``'s ``"ofas"`` section; unknown keys are
        refused (a typo would otherwise be dropped silently). Missing keys take their defaults."""
        if not isinstance(data, dict):
            raise TypeError(f"OFASConfig.from_dict expects a dict, got {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in cls.keys())
        if unknown:
            raise ValueError(f"unknown OFASConfig keys {unknown}; the known keys are {list(cls.keys())} (check the "
                             "spelling, or upgrade ofas-wrap if a newer version wrote this config)")
        return cls(**data)

    def replace(self, **changes: Any) -> OFASConfig:
        """A copy with ``changes`` applied, checked again."""
        return replace(self, **changes)

    # --------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory: PathLike) -> Path:
        """Write this config as the ``"ofas"`` section of ``save_directory/config.json``; returns the file.

        In a folder written by ``OFASModel.save_pretrained`` only that section changes (every other field, the
        weights and the card are kept); elsewhere a small config with the format fields and ``"ofas"`` is written.
        The write is atomic (a temporary file, then a rename).
        """
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder; OFASConfig.save_pretrained writes a folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_NAME
        if path.is_file():
            document = read_document(path)
            document["ofas"] = self.to_dict()
        else:
            document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "ofas_wrap_version": __version__,
                        "ofas": self.to_dict()}
        return write_atomic(path, json.dumps(document, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: PathLike) -> OFASConfig:
        """The config saved in a folder (``OFASModel.save_pretrained`` or :meth:`save_pretrained`), or in a
        ``config.json`` file given directly. Raises FileNotFoundError, or ValueError naming the file (a
        :class:`CheckpointError` when it is not a readable ofas-wrap config, as :func:`read_document` says)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: give a folder written by save_pretrained (or its "
                                    f"{CONFIG_NAME})")
        document = read_document(path)
        section = document.get("ofas")
        if not isinstance(section, dict):
            raise ValueError(f"{path}: no 'ofas' section with the head settings (got {section!r}); this is not an "
                             "ofas-wrap config")
        try:
            return cls.from_dict(section)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def read_document(path: PathLike, text: Optional[str] = None) -> dict[str, Any]:
    """The JSON object of an ofas-wrap config file (``text``, when given, is its content: the config inside a
    TorchScript export): valid JSON, an object, the ofas-wrap format (or none named) and a format version this
    ofas-wrap reads (or none). The one reader of configs; raises :class:`CheckpointError` naming the file and the
    fix. ``OFASConfig.from_pretrained`` reads the ``"ofas"`` section from it, ``read_config`` checks every field.

    Example:
        >>> read_document("config.json", text='{"format": "ofas-wrap", "format_version": 1}')["format_version"]
        1
        >>> read_document("config.json", text='{"format_version": 9}')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ofas_wrap._config.CheckpointError: config.json: in format version 9, but this ofas-wrap ... upgrade it ...
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is damaged, save it again") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} is not an ofas-wrap config (expected a JSON object, got "
                              f"{type(document).__name__})")
    if document.get("format") not in (None, FORMAT_NAME):
        raise CheckpointError(f"{path} is not an ofas-wrap config (format {document.get('format')!r})")
    version = document.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        writer = document.get("ofas_wrap_version")
        raise CheckpointError(
            f"{path}: {f'written by ofas-wrap {writer} in' if writer else 'in'} format version {version}, but this "
            f"ofas-wrap {__version__} reads format versions up to {FORMAT_VERSION}; upgrade it (pip install -U "
            "ofas-wrap)"
        )
    return document


def _listed(values: tuple[str, ...], last: str = "") -> str:
    quoted = [repr(v) for v in values]
    if last and len(quoted) > 1:
        return ", ".join(quoted[:-1]) + f" {last} " + quoted[-1]
    return ", ".join(quoted)
