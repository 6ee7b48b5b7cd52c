"""The one error of :mod:`ofas_wrap.data`: a dataset that cannot be used, with what to do about it."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset that cannot be used: missing path, unknown layout, empty split, no label column, ..."""
