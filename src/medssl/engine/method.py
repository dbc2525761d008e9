"""The contract between a training method and the engine.

A method supplies data streams (batch samplers), a batch recipe (rows → tensors on the device,
augmented), a loss, and optionally validation, per-epoch and per-step hooks and state that must
survive a resume. The engine (medssl.engine.loop.Trainer) owns everything else: device, AMP,
memory format, optimizer, checkpoints, resume, early stopping, progress, metric logging.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from medssl.data.samplers import BatchSampler
from medssl.engine.context import Context


@dataclass
class StepOutput:
    """A training step's result. `loss` is backpropagated; `logs` (loss terms, mask rates …) are
    streamed to the tracker at log points (tensors are only synchronised there)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


class Method(ABC):
    """Subclass, implement the four abstract methods, add the class to
    `medssl.methods.METHODS`; stages construct it as `cls(cfg, dataset, cache, hparams)` (the
    stage's LoopConfig, medssl.data.contract.Dataset, medssl.data.cache.ImageCache and an instance
    of `Hyperparameters` or None for its defaults). Stream order matters: the first stream is the
    primary one and one pass over it is an epoch; the others cycle independently (FixMatch's
    unlabeled stream)."""

    name: ClassVar[str] = ""
    # what the method makes: "encoder" (the pretrain stage) or "classifier" (the train stage)
    product: ClassVar[str] = "classifier"
    # the method's own typed hyperparameters: a params.yaml section under `name`, -S overridable
    # (`-S lsd.alpha=1.1`) and part of the resume fingerprint; None: the method has none
    Hyperparameters: ClassVar[type[BaseModel] | None] = None
    hparams: BaseModel | None = None

    def resolve_hparams(self, hparams: BaseModel | None) -> None:
        """Set `self.hparams` (the defaults when None; a wrong type is a bug of the caller)."""
        model = self.Hyperparameters
        if model is None:
            self.hparams = None
        elif hparams is None:
            self.hparams = model()
        elif not isinstance(hparams, model):
            raise TypeError(f"{self.name} expects {model.__name__}, got {type(hparams).__name__}")
        else:
            self.hparams = hparams

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to resume this run (beyond the loop's keys)."""
        if self.hparams is None:
            return {}
        return {f"{self.name}.{k}": v for k, v in self.hparams.model_dump(mode="json").items()}

    # validation metric (higher is better) that selects the best epoch and drives early stopping;
    # None: no early stopping, the last weights are kept (paper 000 §3.2, unsupervised training)
    monitor: ClassVar[str | None] = None

    @abstractmethod
    def build_model(self, ctx: Context) -> nn.Module:
        """The module to train (all its trainable parameters go to the optimizer). Called after
        the engine seeded torch; the engine moves it to the device."""

    @abstractmethod
    def streams(self) -> dict[str, BatchSampler]:
        """Named batch samplers, primary first (e.g. {"labeled": …, "unlabeled": …})."""

    @abstractmethod
    def make_batch(self, rows: Mapping[str, np.ndarray], ctx: Context) -> Any:
        """The step's input from one batch of rows per stream: load, upload, augment (draw
        randomness from `ctx.generator`). Runs outside autocast."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, ctx: Context) -> StepOutput:
        """Forward pass and loss (runs inside autocast)."""

    # --- optional hooks -------------------------------------------------------------------------

    def optimizer_params(self, model: nn.Module) -> Iterable[torch.Tensor] | list[dict[str, Any]]:
        """What the optimizer updates: parameters or param groups (e.g. a slower backbone)."""
        return [p for p in model.parameters() if p.requires_grad]

    def on_epoch_start(
        self, model: nn.Module, epoch: int, ctx: Context
    ) -> Iterable[torch.Tensor] | None:
        """Before the first step of each epoch (0-based), e.g. DeepCluster's k-means relabelling.
        Whatever it changes must be in `state_dict()`. Returns the parameters whose optimizer state
        (Adam moments) the engine drops, e.g. a re-initialised head; None: nothing to reset."""
        return None

    def after_step(self, model: nn.Module, step: int, ctx: Context) -> None:
        """After each optimizer step (1-based count), e.g. an EMA teacher update."""
        return None

    def validate(self, model: nn.Module, ctx: Context) -> dict[str, float]:
        """Validation metrics at the end of each epoch (model in eval mode, no grad, autocast).
        Must contain `monitor` when it is set."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state a resumed run needs (pseudo-labels, cluster centroids, EMA weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""
        return None
