"""Early stopping on a validation metric, keeping the best epoch's weights (paper 000 §3.2: stop
when the validation set has not improved for seven epochs; keep the best epoch's model)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medssl.engine.checkpoint import to_cpu


class EarlyStopping:
    """Tracks the best score (higher is better) and a CPU copy of the weights that reached it.
    `should_stop` after `patience` consecutive epochs without a strict improvement (only when
    `enabled`: a step-budget run selects its best epoch without stopping early)."""

    def __init__(self, patience: int, enabled: bool = True) -> None:
        self.patience = patience
        self.enabled = enabled
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, score: float, epoch: int, model: nn.Module) -> bool:
        """Record an epoch's score; True when it is the best so far (weights copied)."""
        if not math.isnan(score) and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_epoch, self.bad_epochs = float(score), epoch, 0
            self.best_state = to_cpu(model.state_dict())
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_epochs >= self.patience

    def restore_best(self, model: nn.Module) -> bool:
        """Load the best weights into `model`; False when there are none (no epoch scored)."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state["best_state"]
