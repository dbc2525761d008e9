"""The registered model outside medssl: loaded in a fresh virtual environment made from its own
requirements, and served over REST by `mlflow models serve` (answers equal to `predict`; bad
input is a 400 with one clear message)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medssl.models.pyfunc import png_bytes
from medssl.tracking.registry import gate, log_and_register
from mlflow_server import free_port
from model_files import images_and_expected, saved_classifier

NAME = "served-organs"
CLASSES = ["liver", "kidney", "spleen"]
URI = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registered(module_store):
    """A champion in a sqlite store of its own; (tracking URI, torch model)."""
    root, uri = module_store
    model, spec = saved_classifier(root / "model.pt", CLASSES, seed=3)
    version = log_and_register(root / "model.pt", spec, {"test_f1_weighted": 0.5}, NAME)
    assert gate(NAME, version, "test_f1_weighted").promoted
    return uri, model


def uv() -> list[str] | None:
    if shutil.which("uv"):
        return ["uv"]
    probe = subprocess.run(["python3", "-m", "uv", "--version"], capture_output=True)
    return ["python3", "-m", "uv"] if probe.returncode == 0 else None


@pytest.mark.slow
def test_the_champion_loads_in_a_fresh_venv_from_its_own_requirements(registered, tmp_path):
    uri, model = registered
    command = uv()
    if command is None:
        pytest.skip("uv is not installed (make venv installs it)")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["MLFLOW_TRACKING_URI"] = uri
    requirements = mlflow.pyfunc.get_model_dependencies(URI)
    assert not any("medssl" in line for line in Path(requirements).read_text().splitlines())
    venv = tmp_path / "venv"
    for args in (
        ["venv", "-q", str(venv), "--python", sys.executable],
        ["pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", requirements],
    ):
        proc = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    images, expected = images_and_expected(model, seed=5)
    (tmp_path / "images.json").write_text(
        json.dumps([base64.b64encode(i).decode() for i in images])
    )
    script = f"""
import base64, importlib.util, json, sys
assert importlib.util.find_spec("medssl") is None, "medssl is installed in the fresh venv"
import mlflow, pandas as pd
images = [base64.b64decode(s) for s in json.load(open({str(tmp_path / "images.json")!r}))]
out = mlflow.pyfunc.load_model({URI!r}).predict(pd.DataFrame({{"image": images}}))
print(out.to_json(orient="split"))
"""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = pd.read_json(io.StringIO(proc.stdout.strip().splitlines()[-1]), orient="split")
    np.testing.assert_allclose(out[[f"{c}_prob" for c in CLASSES]], expected, atol=1e-6)
    assert (out[CLASSES].to_numpy() == (expected >= 0.5)).all()


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    """`mlflow models serve` of the champion on a loopback port."""
    uri, model = registered
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_cli, "models", "serve", "-m", URI, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow models serve did not start:\n{log.read_text()[-3000:]}")
        yield url, model
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def frame(images: list[bytes]) -> dict:
    encoded = [[base64.b64encode(i).decode()] for i in images]
    return {"dataframe_split": {"columns": ["image"], "data": encoded}}


def test_rest_scoring_answers_as_predict(server):
    url, model = server
    images, expected = images_and_expected(model, n=4, seed=7)
    status, body = post(url, frame(images))
    assert status == 200, body
    out = pd.DataFrame(body["predictions"])
    local = mlflow.pyfunc.load_model(URI).predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(out[local.columns].to_numpy(float), local.to_numpy(float), atol=1e-6)
    np.testing.assert_allclose(out[[f"{c}_prob" for c in CLASSES]], expected, atol=1e-6)
    # a colour image for a grey model is converted as training converted it
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    status, both = post(url, frame([png_bytes(rgb), png_bytes(grey)]))
    assert status == 200 and both["predictions"][0] == both["predictions"][1]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (frame([b"this is not an image"]), "row 0: not a readable image"),
        (frame([png_bytes(np.zeros((16, 16), np.uint8)), png_bytes(np.zeros((4, 4), np.uint8))]),
         "row 1: a 4x4 image; expected sides of 8 to"),
        ({"dataframe_split": {"columns": ["image"], "data": []}}, "empty batch"),
        ({"dataframe_split": {"columns": ["pixels"], "data": [["abc"]]}}, "image"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_with_one_message(server, payload, message):
    url, _ = server
    status, body = post(url, payload)
    assert status == 400, body
    assert message in body.get("message", ""), body
    ok, _ = post(url, frame([png_bytes(np.zeros((16, 16), np.uint8))]))
    assert ok == 200  # the server did not crash: the next request is answered
