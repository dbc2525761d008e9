"""The registered model: an MLflow pyfunc that labels images on its own.

    mlflow.pyfunc.load_model("models:/abdominal-organs@champion").predict(frame)

Input (the signature): a DataFrame with one column `image` of encoded image bytes (PNG, JPEG, …;
base64 strings in a REST request, as MLflow encodes binary columns). Output: one row per image,
`<class>_prob` (float32 probability) then `<class>` (0/1 at the class's val-tuned threshold) for
every class, in the model's class order.

What travels inside the model: `model.pt` (the medssl classifier), `inference.json` (classes,
per-class thresholds, image size, channels, bit depth: the preprocessing of training), and the
medssl package as a code dependency, so it loads in a fresh environment made from the model's
own requirements (mlflow, torch, torchvision, numpy, pandas, pillow) without installing medssl.

Bad input (no `image` column, an empty batch, bytes that are not an image, an image under
MIN_SIDE or over MAX_SIDE pixels) raises an MlflowException with one message naming the row: the
scoring server answers it as HTTP 400.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

SPEC_FORMAT = "medssl-pyfunc/1"
MODEL_ARTIFACT = "model"
SPEC_ARTIFACT = "inference"
INPUT_COLUMN = "image"
MIN_SIDE, MAX_SIDE = 8, 16384


@dataclass
class InferenceSpec:
    """inference.json: what a caller needs besides the weights."""

    classes: list[str]
    thresholds: list[float | None]
    image_size: int
    channels: int
    bit_depth: int = 8
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = SPEC_FORMAT

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: Path | str) -> InferenceSpec:
        raw = json.loads(Path(path).read_text())
        if raw.get("format") != SPEC_FORMAT:
            raise ValueError(f"{path}: not a {SPEC_FORMAT} spec")
        return cls(**raw)


def bad_input(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def decode_rows(images: pd.Series, spec: InferenceSpec) -> np.ndarray:
    """uint8 pixels [N, S, S(, 3)] of encoded images, as the training data was decoded."""
    from PIL import Image, UnidentifiedImageError

    from medssl.imaging import decode_image

    out = []
    for i, data in enumerate(images):
        if isinstance(data, str):  # a REST client that sent a base64 string as text
            import base64

            data = base64.b64decode(data)
        if not isinstance(data, bytes | bytearray) or not data:
            raise bad_input(f"row {i}: {INPUT_COLUMN!r} is empty or not image bytes")
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
            if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
                raise bad_input(
                    f"row {i}: a {width}x{height} image; expected sides of {MIN_SIDE} to "
                    f"{MAX_SIDE} pixels (it is resized to {spec.image_size})"
                )
            out.append(decode_image(io.BytesIO(data), spec.image_size, spec.channels))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise bad_input(f"row {i}: not a readable image ({type(exc).__name__})") from None
    return np.stack(out)


# MLflow warns at class creation that predict() has no type hints: on purpose (a DataFrame of
# encoded images is validated by the signature and by predict itself). It resets the warning
# filters itself, so the warning is dropped where it would be shown.
with warnings.catch_warnings():
    warnings.showwarning = lambda *args, **kwargs: None

    class ClassifierModel(mlflow.pyfunc.PythonModel):
        """The medssl classifier with its preprocessing, classes and thresholds."""

        def load_context(self, context: Any) -> None:
            import torch

            from medssl.models.classifier import load_model

            self.spec = InferenceSpec.read(context.artifacts[SPEC_ARTIFACT])
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model, _ = load_model(context.artifacts[MODEL_ARTIFACT])
            self.model = model.to(self.device).eval()

        def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them
            """A DataFrame of `<class>_prob` and `<class>` columns, one row per input image (a
            detector's: row, label, score, x1 y1 x2 y2, one row per detected box)."""
            from medssl.models.scoring import decision_frame, detection_frame, probabilities

            frame = (
                model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            )
            if INPUT_COLUMN not in frame.columns:
                raise bad_input(
                    f"expected a column {INPUT_COLUMN!r} of encoded images (PNG/JPEG bytes; base64 "
                    f"in JSON), got columns {list(frame.columns)}"
                )
            if len(frame) == 0:
                raise bad_input("empty batch: send at least one image")
            pixels = decode_rows(frame[INPUT_COLUMN], self.spec)
            if self.spec.meta.get("task") == "detection":  # one row per box, `row` = the input's
                return detection_frame(
                    self.model, pixels, self.spec.classes, image_size=self.spec.image_size,
                    device=self.device,
                )  # fmt: skip
            probs = probabilities(
                self.model, pixels, image_size=self.spec.image_size, device=self.device
            )
            return decision_frame(probs, self.spec.classes, self.spec.thresholds)


def signature(spec: InferenceSpec) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    if spec.meta.get("task") == "detection":
        outputs = [ColSpec("long", "row"), ColSpec("string", "label"), ColSpec("float", "score")]
        outputs += [ColSpec("double", c) for c in ("x1", "y1", "x2", "y2")]
    else:
        outputs = [ColSpec("float", f"{c}_prob") for c in spec.classes]
        outputs += [ColSpec("integer", c) for c in spec.classes]
    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]), outputs=Schema(outputs))


def example_input(spec: InferenceSpec, seed: int = 0) -> pd.DataFrame:
    """One random image of the model's size and channels, PNG-encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (spec.image_size, spec.image_size) + ((3,) if spec.channels == 3 else ())
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return pd.DataFrame({INPUT_COLUMN: [buffer.getvalue()]})


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3] as PNG bytes (what a client sends)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
