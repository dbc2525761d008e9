"""GitHub Actions workflows (actionlint is not installable here): both validate against the
github-workflow JSON schema that check-jsonschema vendors; ci.yml runs `make test`; retrain.yml
fires on data/params/dvc.lock changes and a schedule, pushes the image for the commit, and calls
`medssl pipeline compile|submit` with flags the real CLI has."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def run_lines(wf: dict) -> list[str]:
    """Shell commands of every run step, backslash continuations joined."""
    text = "\n".join(s["run"] for s in steps(wf) if "run" in s)
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def github_glob(pattern: str) -> re.Pattern:
    """GitHub's path-filter syntax: ** crosses folders, * does not."""
    regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    return re.compile(regex)


def schema_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_workflows_validate_against_the_github_workflow_schema(tmp_path):
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "retrain.yml"}
    proc = schema_check(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the schema does reject a broken workflow (a job without runs-on, an unknown trigger)
    bad = tmp_path / "bad.yml"
    bad.write_text("on: {pusj: {}}\njobs:\n  x:\n    steps:\n      - run: make test\n")
    assert schema_check(bad).returncode != 0


def test_ci_runs_make_test_on_push_and_pull_request():
    wf = load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    assert "make test" in run_lines(wf)
    assert wf["permissions"] == {"contents": "read"}
    uses = {s["uses"].split("@")[0]: s for s in steps(wf) if "uses" in s}
    assert uses["astral-sh/setup-uv"]["with"]["enable-cache"] is True
    assert uses["astral-sh/setup-uv"]["with"]["cache-dependency-glob"] == "uv.lock"
    # the infra tests need both binaries (they skip without them)
    assert {"azure/setup-kubectl", "hashicorp/setup-terraform"} <= set(uses)
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # same command as local CI


def test_every_action_is_pinned_and_runs_are_serialized():
    for name in ("ci.yml", "retrain.yml"):
        wf = load(name)
        assert "concurrency" in wf and "permissions" in wf
        for step in steps(wf):
            if "uses" in step:
                ref = step["uses"].split("@")
                assert len(ref) == 2 and re.fullmatch(r"v\d+(\.\d+)*|[0-9a-f]{40}", ref[1]), step
        assert all("timeout-minutes" in job for job in wf["jobs"].values())


def test_retrain_triggers_on_data_params_lock_and_schedule():
    on = load("retrain.yml")["on"]
    assert "workflow_dispatch" in on
    (cron,) = [s["cron"] for s in on["schedule"]]
    assert len(cron.split()) == 5
    assert on["push"]["branches"] == ["main"]
    patterns = [github_glob(p) for p in on["push"]["paths"]]

    def fires(path: str) -> bool:
        return any(p.fullmatch(path) for p in patterns)

    for path in ["data/abdominal-us.dvc", "archive.dvc", "data/raw/site-b.dvc"]:
        assert fires(path), path
    assert fires("params.yaml") and fires("dvc.lock")
    for path in ["src/medssl/cli.py", "README.md", "docs/operations.md", "dvc.yaml.bak"]:
        assert not fires(path), path


def test_retrain_builds_and_pushes_the_commit_image_then_submits_with_it():
    wf = load("retrain.yml")
    image_job, submit_job = wf["jobs"]["image"], wf["jobs"]["submit"]
    assert image_job["permissions"]["packages"] == "write"
    assert "packages" not in wf["permissions"]  # only the build job may push
    (build,) = [s for s in image_job["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert build["with"]["push"] is True
    ref_step = next(s for s in image_job["steps"] if s.get("id") == "ref")
    assert "ghcr.io/" in ref_step["run"] and ":${GITHUB_SHA}" in ref_step["run"]
    tags = build["with"]["tags"].strip().splitlines()
    assert tags == ["${{ steps.ref.outputs.image }}", "${{ steps.ref.outputs.latest }}"]
    # on main, :latest too: the tag the committed spec and the overlays run (same repository)
    assert "latest=${repo}:latest" in ref_step["run"] and "refs/heads/main" in ref_step["run"]
    default_image = re.search(
        r'DEFAULT_IMAGE = "([^"]+)"', (ROOT / "components" / "image.py").read_text()
    ).group(1)
    owner_repo = "ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/medssl"
    assert f'repo="{owner_repo}"' in ref_step["run"]
    assert default_image == "ghcr.io/medssl/medssl:latest"  # the project's own owner: medssl
    for overlay in ("local", "gke"):
        kustom = yaml.safe_load((ROOT / f"infra/k8s/overlays/{overlay}/kustomization.yaml").open())
        (image,) = kustom["images"]
        assert f"{image['name']}:{image.get('newTag', 'latest')}" == default_image
    # the submitted run pins the commit's image, and CI checks every compiled step runs it
    check = next(s for s in submit_job["steps"] if s.get("name", "").startswith("Check that"))
    assert 'build/training.yaml "$IMAGE"' in check["run"]
    assert image_job["outputs"]["image"] == "${{ steps.ref.outputs.image }}"
    assert submit_job["needs"] == "image"
    assert submit_job["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
    # the components' base image at compile time (MEDSSL_IMAGE) is the image just pushed
    assert submit_job["env"]["MEDSSL_IMAGE"] == "${{ needs.image.outputs.image }}"
    assert "make venv" in run_lines(wf)
    assert wf["defaults"]["run"]["shell"] == "bash"  # pipefail for `submit | tee`


def medssl_calls(wf: dict) -> list[list[str]]:
    calls = []
    for line in run_lines(wf):
        words = shlex.split(line.split("|")[0])
        if words and Path(words[0]).name == "medssl":
            calls.append(words[1:])
    return calls


def test_retrain_submits_with_the_commit_as_data_revision_and_links_the_run():
    wf = load("retrain.yml")
    calls = medssl_calls(wf)
    commands = [c[:2] for c in calls]
    assert commands.index(["pipeline", "compile"]) < commands.index(["pipeline", "submit"])
    submit = calls[commands.index(["pipeline", "submit"])]
    opts = dict(zip(submit[2::2], submit[3::2], strict=False))
    assert opts["--data-rev"] in {"$GITHUB_SHA", "${{ github.sha }}"}
    assert opts["--host"] == "$KFP_HOST"
    assert load("retrain.yml")["jobs"]["submit"]["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert opts["--image"] == "$IMAGE"
    assert opts["--data-repo"] == "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY"  # this repository
    compile_ = calls[commands.index(["pipeline", "compile"])]
    assert dict(zip(compile_[2::2], compile_[3::2], strict=False))["--image"] == "$IMAGE"
    script = next(s["run"] for s in steps(wf) if "pipeline submit" in s.get("run", ""))
    assert "$GITHUB_STEP_SUMMARY" in script and '"run: "' in script


def test_medssl_commands_in_the_workflow_exist_in_the_cli():
    """Every `medssl …` call in retrain.yml uses a command and options the real CLI has."""
    from medssl.cli import app

    root = typer.main.get_command(app)
    calls = medssl_calls(load("retrain.yml"))
    assert calls
    for call in calls:
        command = root
        words = list(call)
        # typer vendors click: duck-type groups (they have .commands)
        while hasattr(command, "commands") and words and not words[0].startswith("-"):
            name = words.pop(0)
            sub = command.commands.get(name)
            if sub is None:
                pytest.fail(f"`medssl {' '.join(call)}`: no command {name!r} in the CLI")
            command = sub
        known = {o for p in command.params for o in p.opts + p.secondary_opts}
        used = {w for w in words if w.startswith("--")}
        assert used <= known, f"`medssl {' '.join(call)}`: unknown options {used - known}"
