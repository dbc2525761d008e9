"""Predict stage: label new images with a model — a model folder or a registered version
(`models:/abdominal-organs@champion`).

    medssl predict MODEL DATA --out DIR

DATA is a dataset folder (dataset.yaml + manifest), a folder of PNG/JPEG images, or a DICOM export
(ingested first through `medssl ingest`'s reader and de-identification into DIR/ingested: no
header value, no original UID, no path leaves it; the salt comes from $MEDSSL_INGEST_SALT).

DIR (complete or absent, like every stage's output) holds

    predictions.parquet  one row per image: image, patient_id, exam_id, split (what DATA has),
                         <class>_prob (float32) and <class> (0/1 at the model's val-tuned
                         threshold) per class, model_name, model_version, model_run_id;
                         a detector's: one row per detected box (score >= 0.05, at most 100
                         per image): the image's ids, label, score, x1 y1 x2 y2 (pixels of
                         the model's input size), model_name, model_version, model_run_id
    predict.json         the summary: model, data, images, images/s, device

A long run is resumable: it works in `.<DIR>.partial/`, writing a part every `predict.chunk`
images; run the command again (same model, same data) and it continues after the last part.
Images are decoded as in training (`medssl.data.cache.decode_image`) and scored in float32,
batched on the GPU when there is one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from medssl.config import IngestConfig, PredictConfig
from medssl.data.contract import INFO_FILE, Dataset, write_table
from medssl.engine.context import resolve_device
from medssl.errors import ConfigError, DataContractError, MedsslError
from medssl.fileio import atomic_write_text, partial_dir, staged_dir
from medssl.models.pyfunc import InferenceSpec
from medssl.models.scoring import decision_frame, detection_frame, probabilities

PREDICTIONS_FILE = "predictions.parquet"
SUMMARY_FILE = "predict.json"
PARTS_DIR = "parts"
FINGERPRINT_FILE = "fingerprint.json"
INGESTED_DIR = "ingested"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ID_COLUMNS = ["image", "patient_id", "exam_id", "lesion_id", "split"]


@dataclass
class Predictor:
    """A classifier with what deciding needs: classes, thresholds, preprocessing (`spec`), and
    where it comes from (`source`: model_name, model_version, model_run_id, model_uri)."""

    model: nn.Module
    spec: InferenceSpec
    source: dict[str, str] = field(default_factory=dict)


@dataclass
class PredictResult:
    out_dir: Path
    images: int
    seconds: float
    images_per_s: float
    device: str
    model: dict[str, str]
    data: str
    resumed_from: int = 0

    def describe(self) -> str:
        m = self.model
        who = (
            f"{m.get('model_name')} v{m['model_version']}"
            if m.get("model_version")
            else m.get("model_uri", "the model")
        )
        resumed = f" (resumed after {self.resumed_from:,})" if self.resumed_from else ""
        return (
            f"predicted {self.images:,} images{resumed} with {who} on {self.device} at "
            f"{self.images_per_s:.0f} img/s → {self.out_dir / PREDICTIONS_FILE}"
        )


# ------------------------------------------------------------------------------ the model


def load_predictor(model: str | Path) -> Predictor:
    """A registry URI (`models:/name@alias`, `models:/name/3`) or a model folder (model.pt plus
    its own evaluation in MODEL_DIR/eval, whose val-tuned thresholds decide 0/1)."""
    text = str(model)
    if text.startswith("models:/"):
        return _from_registry(text)
    return _from_folder(Path(model))


def _from_folder(model_dir: Path) -> Predictor:
    from medssl.config import RegisterConfig
    from medssl.models import load_model
    from medssl.stages.register import check_inputs, inference_spec

    if not (model_dir / "model.pt").is_file():
        raise DataContractError(f"{model_dir}: no model.pt (a model folder from `medssl train`)")
    _, _, metrics, _, sha = check_inputs(model_dir, None, None, RegisterConfig())
    classifier, meta = load_model(model_dir / "model.pt")
    source = {"model_uri": str(model_dir.resolve()), "model_sha256": sha}
    return Predictor(classifier, inference_spec(meta, metrics), source)


def _from_registry(uri: str) -> Predictor:
    from medssl.tracking.registry import load_version, resolve_version
    from medssl.tracking.runs import client

    name, _, ref = uri.removeprefix("models:/").partition("@")
    if not ref:
        name, _, ref = name.partition("/")
    if not name or not ref:
        raise ConfigError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    mc = client(read_only=True)
    mv = resolve_version(mc, name, ref)
    source = {
        "model_uri": uri,
        "model_name": name,
        "model_version": str(mv.version),
        "model_run_id": mv.run_id or "",
    }
    model, spec = load_version(name, mv.version)
    return Predictor(model, spec or _legacy_spec(name, mv), source)


def _legacy_spec(name: str, mv: Any) -> InferenceSpec:
    """A version logged with mlflow.pytorch before the pyfunc: its classes, size and thresholds
    from its tags (the metrics JSON holds the per-class thresholds)."""
    tags = mv.tags or {}
    try:
        classes = json.loads(tags["medssl.model.classes"])
        per_class = json.loads(tags["medssl.metrics"])["per_class"]
        thresholds = [per_class[c]["threshold"] for c in classes]
        size, channels = int(tags["medssl.model.image_size"]), int(tags["medssl.model.in_channels"])
    except (KeyError, ValueError, TypeError):
        raise MedsslError(
            f"{name} v{mv.version} was registered before models carried their classes and "
            "thresholds and its tags do not hold them: it cannot decide 0/1; register its model "
            "folder again (medssl register)"
        ) from None
    return InferenceSpec(classes, thresholds, size, channels)


# ------------------------------------------------------------------------------ the data


@dataclass
class _Images:
    """What to score: ids per image and a decoder from row positions to uint8 pixels."""

    ids: pd.DataFrame
    paths: list[Path]
    decode_size: int
    channels: int
    bit_depth: int
    source: str


def _images(data_dir: Path, out_dir: Path, spec: InferenceSpec, ingest: IngestConfig) -> _Images:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataContractError(f"{data_dir}: not a folder")
    if (data_dir / INFO_FILE).is_file():
        return _dataset_images(Dataset.open(data_dir), str(data_dir))
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and not _hidden(p, data_dir))
    pictures = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if any(_is_dicom(p) for p in files if p not in pictures):
        from medssl.stages.ingest import ingest as run_ingest

        target = partial_dir(out_dir) / INGESTED_DIR
        marker = target.parent / f"{INGESTED_DIR}.source"
        source = str(data_dir.resolve())
        if marker.is_file() and marker.read_text() != source:  # another export's leftovers
            shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(source)  # a rerun on this export grows (resumes) its ingest
        result = run_ingest(data_dir, target, ingest, progress=False)
        return _dataset_images(Dataset.open(result.out_dir), f"{data_dir} (DICOM, ingested)")
    if not pictures:
        raise DataContractError(f"{data_dir}: no dataset.yaml, no images and no DICOM files")
    ids = pd.DataFrame({"image": [p.relative_to(data_dir).as_posix() for p in pictures]})
    ids["patient_id"] = ids["exam_id"] = ids["lesion_id"] = ids["split"] = pd.NA
    return _Images(ids, pictures, spec.image_size, spec.channels, 8, str(data_dir))


def _dataset_images(dataset: Dataset, source: str) -> _Images:
    m = dataset.manifest
    paths = [dataset.image_path(p) for p in m["image"]]
    info = dataset.info
    return _Images(m[ID_COLUMNS].reset_index(drop=True), paths, info.image_size, info.channels,
                   info.bit_depth, source)  # fmt: skip


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# ------------------------------------------------------------------------------ the stage


def predict(
    model: str | Path,
    data_dir: Path,
    out_dir: Path,
    cfg: PredictConfig,
    *,
    ingest: IngestConfig | None = None,
    progress: bool | None = None,
    predictor: Predictor | None = None,
) -> PredictResult:
    """Score every image of `data_dir` with `model`; write `out_dir` (see the module doc)."""
    from medssl.imaging import decode_image

    out_dir = Path(out_dir)
    predictor = predictor or load_predictor(model)
    spec = predictor.spec
    staging = partial_dir(out_dir)
    images = _images(data_dir, out_dir, spec, ingest or IngestConfig())
    if images.channels != spec.channels:
        raise DataContractError(
            f"{data_dir}: {images.channels}-channel images, the model takes {spec.channels}"
        )
    device = resolve_device(cfg.device)
    model_on_device = predictor.model.to(device).eval()
    fingerprint = {
        "model": predictor.source,
        "classes": spec.classes,
        "thresholds": spec.thresholds,
        "images": hashlib.sha256("\n".join(map(str, images.paths)).encode()).hexdigest(),
    }
    done = _resume(staging, fingerprint)
    spec_args = (images.decode_size, images.channels, images.bit_depth)
    start, total = time.perf_counter(), len(images.paths)
    with staged_dir(out_dir, staging=staging) as tmp:
        parts = tmp / PARTS_DIR
        parts.mkdir(exist_ok=True)
        atomic_write_text(tmp / FINGERPRINT_FILE, json.dumps(fingerprint, sort_keys=True))
        bar = tqdm(total=total, initial=done, unit="img", desc="predict", disable=progress is False)
        with bar:
            for first in range(done, total, cfg.chunk):
                rows = range(first, min(first + cfg.chunk, total))
                pixels = _decode(images, rows, spec_args, decode_image)
                ids = images.ids.iloc[list(rows)].reset_index(drop=True)
                if spec.meta.get("task") == "detection":  # one row per box
                    boxes = detection_frame(
                        model_on_device, pixels, spec.classes, image_size=spec.image_size,
                        batch_size=cfg.batch_size, device=device,
                    )  # fmt: skip
                    part = pd.concat(
                        [ids.iloc[boxes.pop("row")].reset_index(drop=True), boxes], axis=1
                    )
                else:
                    probs = probabilities(
                        model_on_device, pixels, image_size=spec.image_size,
                        batch_size=cfg.batch_size, device=device,
                    )  # fmt: skip
                    part = pd.concat(
                        [ids, decision_frame(probs, spec.classes, spec.thresholds)], axis=1
                    )
                write_table(part, parts / f"part-{first:012d}.parquet")
                bar.update(len(rows))
        table = _collect(parts, predictor.source)
        write_table(table, tmp / PREDICTIONS_FILE)
        shutil.rmtree(parts)
        (tmp / FINGERPRINT_FILE).unlink()
        (tmp / f"{INGESTED_DIR}.source").unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        result = PredictResult(
            out_dir=out_dir,
            images=len(table),
            seconds=round(seconds, 2),
            images_per_s=round((total - done) / seconds, 1) if seconds else 0.0,
            device=str(device),
            model=predictor.source,
            data=images.source,
            resumed_from=done,
        )
        summary = {**asdict(result), "out_dir": str(out_dir), "classes": spec.classes}
        summary["thresholds"] = spec.thresholds
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _decode(images: _Images, rows: range, spec: tuple[int, int, int], decode: Any) -> np.ndarray:
    out = []
    for i in rows:
        path = images.paths[i]
        try:
            out.append(decode(path, *spec))
        except FileNotFoundError:
            raise DataContractError(f"{path}: image missing") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataContractError(f"{path}: cannot decode the image ({exc})") from None
    return np.stack(out)


def _resume(staging: Path, fingerprint: dict[str, Any]) -> int:
    """Images already scored by an interrupted run of the same model on the same data (0: start
    afresh, clearing another run's parts)."""
    saved = staging / FINGERPRINT_FILE
    parts = sorted((staging / PARTS_DIR).glob("part-*.parquet"))
    try:
        same = json.loads(saved.read_text()) == json.loads(json.dumps(fingerprint))
    except (OSError, ValueError):
        same = False
    if not same:
        for part in parts:
            part.unlink()
        return 0
    return sum(len(pd.read_parquet(p, columns=["image"])) for p in parts)


def _collect(parts: Path, source: dict[str, str]) -> pd.DataFrame:
    tables = [pd.read_parquet(p) for p in sorted(parts.glob("part-*.parquet"))]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ID_COLUMNS)
    for key in ("model_name", "model_version", "model_run_id"):
        table[key] = pd.array([source.get(key, "")] * len(table), dtype="string")
    return table
