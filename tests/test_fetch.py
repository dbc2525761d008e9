"""The fetch stage against a real DVC remote on a local S3 server (moto): a dataset pinned to a
git revision comes back as it was at that revision, from the remote, with its DVC hash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medssl.errors import DataContractError
from medssl.stages.fetch import TAG_DVC_HASH, TAG_REV, FetchResult, fetch_dataset
from s3server import commit_all, init_repo, sh, tree_digest

DATASET = "data/abdominal-us"


@pytest.fixture(scope="module")
def origin(s3, tiny_archive, tmp_path_factory):
    """A bare git repository (what a git URL points at) whose commits rev1 and rev2 track two
    versions of the tiny archive, both pushed to an S3 remote. The committed remote config has no
    endpoint: clients find the server through AWS_ENDPOINT_URL, as in the cluster secret."""
    root = tmp_path_factory.mktemp("fetch")
    bucket = s3.make_bucket("fetch")
    env = s3.subprocess_env(endpoint=True)
    work = init_repo(root / "work", env)
    data = work / DATASET
    shutil.copytree(tiny_archive, data)
    sh("dvc", "add", DATASET, cwd=work, env=env)
    (work / ".dvc" / "config").write_text(  # what `dvc remote add -d storage …` writes
        "[core]\n    analytics = false\n    remote = storage\n"
        f"['remote \"storage\"']\n    url = s3://{bucket}/dvc\n"
        "['remote \"nowhere\"']\n    url = s3://no-such-bucket/dvc\n"
    )
    rev1 = commit_all(work, env, "dataset v1")
    sh("dvc", "push", "-q", cwd=work, env=env)
    # v2: one image removed, one relabeled file, a new file
    removed = sorted((data / "images").rglob("*.png"))[0]
    removed.unlink()
    (data / "dataset.yaml").write_text((data / "dataset.yaml").read_text() + "# v2\n")
    (data / "NOTES.txt").write_text("second version\n")
    sh("dvc", "add", DATASET, cwd=work, env=env)
    rev2 = commit_all(work, env, "dataset v2")
    sh("dvc", "push", "-q", cwd=work, env=env)
    # v3 is committed but never pushed
    (data / "unpushed.txt").write_text("only in the local cache\n")
    sh("dvc", "add", DATASET, cwd=work, env=env)
    rev3 = commit_all(work, env, "dataset v3, not pushed")
    sh("git", "tag", "v1", rev1, cwd=work, env=env)
    bare = root / "origin.git"
    sh("git", "clone", "-q", "--bare", work, bare, cwd=root, env=env)
    return {
        "url": bare.as_uri(),  # file:///…/origin.git: DVC clones it like any git URL
        "work": work,
        "rev1": rev1,
        "rev2": rev2,
        "rev3": rev3,
        "removed": removed.relative_to(data).as_posix(),
        "v1_digest": tree_digest(tiny_archive),
    }


@pytest.fixture
def s3_env(s3, monkeypatch):
    s3.apply_env(monkeypatch, endpoint=True)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # an unreachable remote fails at once


def test_fetch_two_revisions(origin, s3_env, tmp_path):
    out = tmp_path / "dataset"
    first = fetch_dataset(origin["url"], "v1", DATASET, out)
    assert isinstance(first, FetchResult)
    assert first.rev == origin["rev1"]  # the tag resolved to its commit
    assert tree_digest(out) == origin["v1_digest"]  # byte-identical, from S3
    assert first.files == len(origin["v1_digest"])
    assert first.dvc_hash and first.dvc_hash.endswith(".dir")
    dvc_file = (origin["work"] / f"{DATASET}.dvc").read_text()
    assert first.dvc_hash not in dvc_file  # the work tree is at v3 now

    second = fetch_dataset(origin["url"], origin["rev2"][:10], DATASET, out)
    assert second.rev == origin["rev2"]
    got = tree_digest(out)  # replaced, not merged
    assert origin["removed"] not in got and "NOTES.txt" in got
    assert got["dataset.yaml"] != origin["v1_digest"]["dataset.yaml"]
    assert second.files == first.files  # one image fewer, one note more
    assert second.dvc_hash != first.dvc_hash

    tags = second.as_tags()
    assert tags[TAG_REV] == origin["rev2"] and tags[TAG_DVC_HASH] == second.dvc_hash
    assert tags["medssl.data.path"] == DATASET and tags["medssl.data.repo"] == origin["url"]
    line = second.describe()
    assert "\n" not in line and origin["rev2"][:12] in line and str(out) in line
    assert not list(tmp_path.glob(".dataset.*"))  # no staging folders left behind


def test_fetch_from_a_local_working_copy_uses_head(origin, s3_env, tmp_path):
    """A local path reads the committed HEAD (v3 here, in the copy's own DVC cache), never the
    uncommitted workspace."""
    work = origin["work"]
    (work / DATASET / "uncommitted.txt").write_text("not in any commit\n")
    try:
        result = fetch_dataset(str(work), None, DATASET, tmp_path / "ds")
    finally:
        (work / DATASET / "uncommitted.txt").unlink()
    assert result.rev == origin["rev3"]
    names = set(tree_digest(tmp_path / "ds"))
    assert "unpushed.txt" in names and "uncommitted.txt" not in names


@pytest.mark.parametrize(
    ("rev", "path", "remote", "message"),
    [
        ("no-such-branch", DATASET, None, "unknown git revision"),
        ("v1", "data/missing", None, "no data/missing in the repository"),
        ("v1", "data/abdominal-us.dvc", None, "is a file, not a dataset folder"),
        ("v1", DATASET, "undefined", "remote 'undefined' doesn't exist"),
        ("v1", DATASET, "nowhere", "cannot"),  # a bucket that does not exist
        ("rev3", DATASET, None, "was `dvc push` run?"),  # committed, never pushed
    ],
)
def test_fetch_errors_leave_out_dir_alone(origin, s3_env, tmp_path, rev, path, remote, message):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "keep.txt").write_text("previous fetch\n")
    before = tree_digest(out)
    rev = origin.get(rev, rev)
    with pytest.raises(DataContractError, match=message) as info:
        fetch_dataset(origin["url"], rev, path, out, remote=remote)
    assert "\n" not in str(info.value)
    assert tree_digest(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name != "dataset"]


def test_unreachable_remote(origin, s3, monkeypatch, tmp_path):
    s3.apply_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DataContractError, match="Could not connect to the endpoint"):
        fetch_dataset(origin["url"], "v1", DATASET, tmp_path / "ds")
    assert not list(tmp_path.iterdir())


def test_credentials_stay_out_of_tags():
    result = FetchResult(
        repo="https://github.com/org/data.git",
        rev="a" * 40,
        path=DATASET,
        files=1,
        dvc_hash=None,
        out_dir=Path("x"),
    )
    assert TAG_DVC_HASH not in result.as_tags() and "not DVC-tracked" in result.describe()
    with pytest.raises(DataContractError, match="cannot clone") as info:
        fetch_dataset("https://user:s3cret@127.0.0.1:9/none.git", "main", DATASET, Path("x"))
    assert "s3cret" not in str(info.value) and "https://127.0.0.1:9/none.git" in str(info.value)
