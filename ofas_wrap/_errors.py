"""Errors raised by ofas_wrap."""

__all__ = ["SurgeryError"]


class SurgeryError(RuntimeError):
    """adaptify() could not turn the model into an OFAS model; the message says why and what to do."""
