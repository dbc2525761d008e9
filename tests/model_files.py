"""A small medssl classifier saved as model.pt, with the inference spec the registry logs with it
(for registry tests that need a real model but no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medssl.models import build_classifier, save_model
from medssl.models.pyfunc import InferenceSpec, png_bytes


def saved_classifier(
    path: Path, classes: list[str], *, seed: int = 0, image_size: int = 16
) -> tuple[torch.nn.Module, InferenceSpec]:
    """A random resnet18 classifier on grey `image_size` px images written to `path`; the
    model (eval mode) and a spec with threshold 0.5 for every class."""
    torch.manual_seed(seed)
    model = build_classifier("resnet18", len(classes), 1).eval()
    meta = {
        "method": "supervised",
        "backbone": "resnet18",
        "classes": classes,
        "in_channels": 1,
        "image_size": image_size,
        "task": "multilabel",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, meta)
    spec = InferenceSpec(
        classes, [0.5] * len(classes), image_size, 1, meta={"method": "supervised"}
    )
    return model, spec


def images_and_expected(
    model: torch.nn.Module, n: int = 3, size: int = 16, seed: int = 0
) -> tuple[list[bytes], np.ndarray]:
    """`n` random grey PNGs and the model's probabilities for them."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
        expected = torch.sigmoid(model(x)).numpy()
    return [png_bytes(p) for p in pixels], expected
