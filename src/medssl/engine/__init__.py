"""The one training loop (Trainer) and the Method contract every method implements."""

from medssl.engine.context import Context, resolve_device
from medssl.engine.early_stopping import EarlyStopping
from medssl.engine.loop import Callback, FitResult, Trainer
from medssl.engine.method import Method, StepOutput

__all__ = [
    "Callback",
    "Context",
    "EarlyStopping",
    "FitResult",
    "Method",
    "StepOutput",
    "Trainer",
    "resolve_device",
]
