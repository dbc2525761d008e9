"""Fetch stage: download a DVC-tracked dataset folder of a git repository at a given revision from
the repository's DVC remote (`dvc.api.DVCFileSystem`), so a pipeline run can pin its data to a
commit (`--data-rev`) and record which data it trained on.

`repo` is a git URL (https, ssh, file://) or a local path. DVC clones a URL into a temporary
folder and reads the remote from the `.dvc/config` committed at `rev`; credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and, for MinIO or
another S3-compatible store, AWS_ENDPOINT_URL unless the remote sets `endpointurl`). A local
working copy is read at `rev` (default HEAD, never the uncommitted workspace) and uses its own DVC
cache before the remote.

The output folder is written next to `out_dir` and moved into place at the end: a failed fetch
leaves `out_dir` as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medssl.errors import DataContractError, MedsslError
from medssl.fileio import output_errors, swap_in

TAG_REPO = "medssl.data.repo"
TAG_REV = "medssl.data.rev"
TAG_PATH = "medssl.data.path"
TAG_DVC_HASH = "medssl.data.dvc_hash"
_REASON_CHARS = 300
_USERINFO = re.compile(r"(\w+://)[^/\s@]+@")


@dataclass
class FetchResult:
    repo: str  # as given, without user:password@ in a URL
    rev: str  # the resolved commit sha
    path: str  # the folder inside the repository
    files: int
    dvc_hash: str | None  # DVC's .dir md5 of the folder (from its .dvc file or dvc.lock)
    out_dir: Path

    def describe(self) -> str:
        """One line for the terminal."""
        digest = self.dvc_hash or "not DVC-tracked"
        return (
            f"fetched {self.path} of {self.repo}@{self.rev[:12]} ({digest}): "
            f"{self.files} files → {self.out_dir}"
        )

    def as_tags(self) -> dict[str, str]:
        """MLflow run tags recording which data a run used."""
        tags = {TAG_REPO: self.repo, TAG_REV: self.rev, TAG_PATH: self.path}
        if self.dvc_hash:
            tags[TAG_DVC_HASH] = self.dvc_hash
        return tags

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        return out


def fetch_dataset(
    repo: str,
    rev: str | None,
    path: str,
    out_dir: Path,
    *,
    remote: str | None = None,
    progress: bool = False,
) -> FetchResult:
    """Download folder `path` of git repository `repo` at revision `rev` (branch, tag, sha; None:
    the default branch of a URL, HEAD of a local repository) from its DVC remote (`remote`: a
    remote name from its config instead of the default) into `out_dir`, replacing what was there.

    Raises a one-line DataContractError for an unknown revision, a path that is not in the
    repository at that revision, an unknown remote, or data that cannot be downloaded (remote
    unreachable, objects never pushed)."""
    from dvc.api import DVCFileSystem
    from dvc.repo.open_repo import clean_repos

    shown = _safe_url(repo)
    local = Path(repo).expanduser()
    if local.exists():
        repo = str(local.resolve())
        rev = rev or "HEAD"  # without a rev DVC reads the uncommitted workspace
    path = path.strip("/")
    if not path:
        raise DataContractError("fetch: give the dataset folder inside the repository")
    out_dir = Path(out_dir)
    where = f"{shown}@{rev or 'default branch'}"

    fs = DVCFileSystem(repo, rev=rev, remote=remote)
    try:
        sha = _resolve(fs, where)
        where = f"{shown}@{sha[:12]}"
        info = _info(fs, path, where)
        dvc_hash = _dvc_hash(info)
        files = _download(fs, path, out_dir, where, progress)
    finally:
        with suppress(Exception):
            fs.close()
        clean_repos()  # DVC's temporary clones and object caches of URL repositories
    return FetchResult(
        repo=shown, rev=sha, path=path, files=files, dvc_hash=dvc_hash, out_dir=out_dir
    )


def _resolve(fs: Any, where: str) -> str:
    """The commit sha the file system reads (opening the repository: clone, rev lookup)."""
    from dvc.config import ConfigError as DvcConfigError
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.scm import CloneError, NoSCM, RevError

    try:
        repo = fs.repo
        if isinstance(repo.scm, NoSCM):
            raise DataContractError(f"{where}: not a git repository")
        return str(repo.get_rev())
    except RevError:
        raise DataContractError(f"{where}: unknown git revision") from None
    except CloneError as exc:
        raise DataContractError(f"{where}: cannot clone the repository ({_reason(exc)})") from None
    except NotDvcRepoError:
        raise DataContractError(f"{where}: not a DVC repository") from None
    except DvcConfigError as exc:  # e.g. a --remote that the repository does not define
        raise DataContractError(f"{where}: {_reason(exc)}") from None
    except DvcException as exc:
        raise DataContractError(f"{where}: cannot open the repository ({_reason(exc)})") from None


def _info(fs: Any, path: str, where: str) -> dict[str, Any]:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise DataContractError(f"{where}: no {path} in the repository at this revision") from None
    except Exception as exc:  # e.g. the folder's .dir object missing on the remote
        raise DataContractError(f"{where}: cannot read {path} ({_reason(exc)})") from None
    if info.get("type") != "directory":
        raise DataContractError(f"{where}: {path} is a file, not a dataset folder")
    return info


def _dvc_hash(info: dict[str, Any]) -> str | None:
    """The md5 DVC records for the folder (`<md5>.dir`), None for a folder only git tracks."""
    dvc_info = info.get("dvc_info") or {}
    md5 = info.get("md5") or dvc_info.get("md5")
    return str(md5) if md5 and (info.get("isdvc") or dvc_info) else None


def _download(fs: Any, path: str, out_dir: Path, where: str, progress: bool) -> int:
    """Download into a hidden sibling of out_dir, then swap it in; the number of files."""
    from fsspec.callbacks import TqdmCallback

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = out_dir.parent / f".{out_dir.name}.fetch-{os.getpid()}"
    shutil.rmtree(staging_root, ignore_errors=True)
    staging = staging_root / "data"  # must not exist: fsspec then copies the folder's content
    callback = TqdmCallback(
        tqdm_kwargs={"desc": f"fetch {path}", "unit": "file", "disable": not progress}
    )
    try:
        try:
            with output_errors(out_dir):
                fs.get(path, str(staging), recursive=True, callback=callback)
        except MedsslError:
            raise
        except Exception as exc:  # DVC, fsspec and botocore errors have no common base
            raise DataContractError(
                f"{where}: cannot download {path} from the DVC remote ({_reason(exc)})"
            ) from None
        staging.mkdir(parents=True, exist_ok=True)  # an empty folder
        files = sum(1 for p in staging.rglob("*") if p.is_file())
        swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return files


def _reason(exc: BaseException) -> str:
    """The messages of an exception and its causes on one line (DVC wraps the useful one)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split()) or type(current).__name__
        if isinstance(current, FileNotFoundError):  # an object key or "No storage files…"
            text = f"missing on the remote: {text} (was `dvc push` run?)"
        if not any(text in p for p in parts):
            parts.append(text)
        current = current.__cause__ or current.__context__
    line = _USERINFO.sub(r"\1", ": ".join(parts))  # clone errors repeat the URL
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def _safe_url(repo: str) -> str:
    """`repo` without a user name or token (https://user:token@host/… → https://host/…)."""
    return _USERINFO.sub(r"\1", repo)
