"""What a method sees of the training device: the device itself, bf16 autocast (CUDA only), the
memory format, the augmentation RNG and host→device uploads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medssl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; `cpu`, `cuda`, `cuda:N` as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device {name!r}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(f"train.device {name!r}: only {n} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"train.device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Context:
    """Handed to every Method hook. `generator` draws every augmentation (it lives on the
    device and is checkpointed with the run). `epoch` (0-based) and `step` (optimizer steps
    done) are kept current by the loop."""

    device: torch.device
    generator: torch.Generator
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    epoch: int = 0
    step: int = 0

    @classmethod
    def create(
        cls, device: torch.device, seed: int, amp: bool = True, channels_last: bool = True
    ) -> Context:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        amp_dtype = torch.bfloat16 if amp and device.type == "cuda" else None
        return cls(device, generator, amp_dtype, channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager[object]:
        """bf16 autocast on CUDA when amp is on; nothing on CPU."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def upload(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Host array → tensor on the device (pinned, non-blocking copy on CUDA)."""
        tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the device (and to channels_last when asked)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @contextmanager
    def inference(self, model: nn.Module, *, autocast: bool = True) -> Iterator[nn.Module]:
        """eval mode, no grad, autocast (unless `autocast` is False: float32 throughout, as for
        the predictions a model is judged on); restores the previous mode afterwards."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast() if autocast else nullcontext():
                yield model
        finally:
            model.train(was_training)
