"""Using the champion: the self-contained pyfunc, `medssl predict` (model folder or registry
version; dataset, image folder or DICOM export; resumable), old versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cli_helpers import cli, expect_error
from medssl.config import EvaluateConfig, PredictConfig, RegisterConfig, TrainConfig
from medssl.data.contract import Dataset
from medssl.errors import EXIT_USAGE
from medssl.models import load_model
from medssl.stages import predict as predict_stage
from medssl.stages.evaluate import evaluate
from medssl.stages.predict import predict
from medssl.stages.register import register
from medssl.stages.train import train

NAME = "organs-predict"


@pytest.fixture(scope="module")
def store(module_store):
    return module_store[1]


@pytest.fixture(scope="module")
def champion(store, tiny_split, tmp_path_factory) -> Path:
    """A trained, evaluated tiny model registered as champion; its folder."""
    root = tmp_path_factory.mktemp("predict-model")
    cfg = TrainConfig(
        device="cpu", cache_dir=str(root / "cache"), max_epochs=2, batch_exams=2, lr=1e-3
    )
    train(tiny_split, root / "model", cfg, progress=False)
    evaluate(root / "model", None, EvaluateConfig(bootstrap=0))
    result = register(root / "model", None, None, RegisterConfig(model_name=NAME))
    assert result.promoted
    return root / "model"


def own_predictions(model_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(model_dir / "predictions.parquet")


def test_the_registered_model_is_a_self_contained_pyfunc(champion, tiny_split):
    """Encoded images in, per-class probability and 0/1 out, the val-tuned thresholds inside:
    on test images it gives the train stage's scores and the evaluate stage's decisions."""
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert "pytorch" not in info.flavors and "python_function" in info.flavors
    assert [c.name for c in info.signature.inputs.inputs] == ["image"]
    ds = Dataset.open(tiny_split)
    own = own_predictions(champion)
    test = own[own["split"] == "test"].reset_index(drop=True)
    frame = pd.DataFrame({"image": [ds.image_path(p).read_bytes() for p in test["image"]]})
    out = model.predict(frame)
    classes = ds.info.classes
    assert list(out.columns) == [f"{c}_prob" for c in classes] + classes
    np.testing.assert_allclose(
        out[[f"{c}_prob" for c in classes]], test[[f"score_{c}" for c in classes]], atol=1e-5
    )
    metrics = json.loads((champion / "eval" / "metrics.json").read_text())
    for c in classes:
        threshold = metrics["per_class"][c]["threshold"]
        expected = test[f"score_{c}"] >= (np.inf if threshold is None else threshold)
        assert (out[c].astype(bool) == expected).all(), c


def test_predict_matches_the_evaluation_from_the_registry_and_the_folder(
    champion, tiny_split, tmp_path
):
    by_uri = predict(f"models:/{NAME}@champion", tiny_split, tmp_path / "a", PredictConfig())
    assert by_uri.model["model_version"] == "1" and by_uri.images == 330
    by_folder = predict(champion, tiny_split, tmp_path / "b", PredictConfig(batch_size=7))
    a = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    probs = [c for c in a.columns if c.endswith("_prob")]
    np.testing.assert_allclose(a[probs], b[probs], atol=1e-6)
    assert (a["model_name"] == NAME).all() and (a["model_version"] == "1").all()
    own = own_predictions(champion).set_index("image")
    test = a[a["split"] == "test"].set_index("image")
    for c in (p.removesuffix("_prob") for p in probs):
        np.testing.assert_allclose(test[f"{c}_prob"], own.loc[test.index, f"score_{c}"], atol=1e-5)
    summary = json.loads((tmp_path / "a" / "predict.json").read_text())
    assert summary["images"] == 330 and summary["images_per_s"] > 0
    assert by_folder.model["model_uri"] == str(champion.resolve())


def test_a_folder_of_pngs_gives_the_same_answers(champion, tiny_archive, tiny_split, tmp_path):
    pngs = tmp_path / "pngs"
    manifest = Dataset.open(tiny_archive).manifest.head(12)
    for rel in manifest["image"]:
        (pngs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_archive / rel, pngs / rel)
    predict(champion, pngs, tmp_path / "p", PredictConfig())
    predict(champion, tiny_split, tmp_path / "d", PredictConfig())
    folder = pd.read_parquet(tmp_path / "p" / "predictions.parquet").set_index("image")
    dataset = pd.read_parquet(tmp_path / "d" / "predictions.parquet").set_index("image")
    assert sorted(folder.index) == sorted(manifest["image"])
    assert folder["patient_id"].isna().all()
    probs = [c for c in folder.columns if c.endswith("_prob")]
    np.testing.assert_allclose(folder[probs], dataset.loc[folder.index, probs], atol=1e-6)


def test_an_interrupted_predict_continues_where_it_stopped(champion, tiny_split, tmp_path, mp):
    cfg = PredictConfig(chunk=100)
    real, calls = predict_stage.probabilities, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    mp.setattr(predict_stage, "probabilities", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(champion, tiny_split, tmp_path / "p", cfg)
    assert not (tmp_path / "p").exists()  # nothing half-written; the parts wait in .p.partial
    mp.undo()
    again = predict(champion, tiny_split, tmp_path / "p", cfg)
    assert again.resumed_from == 200 and again.images == 330
    whole = predict(champion, tiny_split, tmp_path / "w", cfg)
    resumed = pd.read_parquet(tmp_path / "p" / "predictions.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(tmp_path / "w" / "predictions.parquet"))
    assert whole.resumed_from == 0


@pytest.fixture
def mp():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_dicom_export_is_ingested_and_de_identified(champion, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSSL_INGEST_SALT", "a-salt-for-the-predict-test-0123")
    export, marker = tmp_path / "export", "Doe^JaneMARKER7"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_us_dicom(export / f"study/{i}.dcm", rng.integers(0, 255, (48, 48), np.uint8), marker)
    result = predict(champion, export, tmp_path / "out", PredictConfig())
    assert result.images == 3
    table = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert table["patient_id"].nunique() == 1 and table["exam_id"].notna().all()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path
    # the de-identified dataset the predictions' image paths refer to
    ingested = Dataset.open(tmp_path / "out" / "ingested")
    assert sorted(ingested.manifest["image"]) == sorted(table["image"])


def write_us_dicom(path: Path, pixels: np.ndarray, patient_name: str) -> None:
    """A one-frame grey ultrasound instance with a planted patient name."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.PatientName, ds.PatientID, ds.Modality = patient_name, "ID-" + patient_name, "US"
    ds.StudyDescription = "Echographie abdominale"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_a_version_logged_before_the_pyfunc_still_predicts(champion, store, tiny_split, tmp_path):
    """Versions logged with mlflow.pytorch keep loading: classes, size and thresholds come from
    their tags; one whose tags lack them is refused in one line."""
    from medssl.tracking.registry import client

    mc = client()
    model, meta = load_model(champion / "model.pt")
    metrics = json.loads((champion / "eval" / "metrics.json").read_text())
    tags = {
        "medssl.model.classes": json.dumps(meta["classes"]),
        "medssl.model.image_size": str(meta["image_size"]),
        "medssl.model.in_channels": str(meta["in_channels"]),
        "medssl.metrics": json.dumps(metrics),
    }
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
    mc.create_registered_model("legacy")
    for version_tags in (tags, {k: v for k, v in tags.items() if k != "medssl.metrics"}):
        mc.create_model_version("legacy", info.model_uri, tags=version_tags)
    old = predict("models:/legacy/1", tiny_split, tmp_path / "old", PredictConfig())
    new = pd.read_parquet(predict(champion, tiny_split, tmp_path / "new", PredictConfig()).out_dir
                          / "predictions.parquet")  # fmt: skip
    got = pd.read_parquet(old.out_dir / "predictions.parquet")
    probs = [c for c in new.columns if c.endswith("_prob")]
    np.testing.assert_allclose(got[probs], new[probs], atol=1e-6)
    assert got[meta["classes"]].equals(new[meta["classes"]])
    with pytest.raises(Exception, match="cannot decide 0/1"):
        predict("models:/legacy/2", tiny_split, tmp_path / "old2", PredictConfig())


def test_predict_cli_errors_are_one_line(capsys, store, tmp_path):
    expect_error(
        cli(capsys, "predict", "models:/nope", str(tmp_path), "--out", str(tmp_path / "o")),
        EXIT_USAGE,
        "models:/<name>@<alias>",
    )
    expect_error(
        cli(capsys, "predict", "models:/no-such-model@champion", ".", "--out", "o"),
        EXIT_USAGE,
        "no registered model 'no-such-model'",
    )
    expect_error(
        cli(capsys, "predict", str(tmp_path), ".", "--out", "o"), EXIT_USAGE, "no model.pt"
    )
    (tmp_path / "empty").mkdir()
    outcome = cli(capsys, "predict", f"models:/{NAME}@champion", tmp_path / "empty", "--out", "o")
    expect_error(outcome, EXIT_USAGE, "no dataset.yaml, no images and no DICOM files")
