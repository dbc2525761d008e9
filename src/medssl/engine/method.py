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
    `medssl.methods.METHODS`; stages construct it as `cls(cfg, dataset, cache)` (TrainConfig,
    medssl.data.contract.Dataset, medssl.data.cache.ImageCache). Stream order matters: the first
    stream is the primary one and one pass over it is an epoch; the others cycle independently
    (FixMatch's unlabeled stream)."""

    name: ClassVar[str] = ""
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

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Context) -> None:
        """Before the first step of each epoch (0-based), e.g. DeepCluster's k-means relabelling.
        Whatever it changes must be in `state_dict()`."""
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
