"""What the Kubeflow components (`components/`) do besides calling a stage, as plain functions so
they are unit-tested without KFP: resolve a run's config from the pipeline parameters, get the
data (DVC fetch or the embedded synthetic archive), fail a step on a validation failure, write the
Markdown reports of the KFP UI, and open / close the MLflow parent run of a pipeline run.

A component body imports from here and from `medssl.stages`; nothing here imports kfp.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medssl.config import Params, load_params
from medssl.errors import ConfigError, DataContractError

if TYPE_CHECKING:
    from medssl.stages.validate import ValidationResult

# Pipeline parameter → params.yaml key: the knobs a run may override (KFP UI form, `submit
# --param`). Every other key travels in the `params` mapping (the whole resolved params.yaml).
SCALAR_PARAMS: dict[str, str] = {
    "data_size": "data.size",
    "data_seed": "data.seed",
    "pretrain_method": "pretrain.method",
    "pretrain_max_epochs": "pretrain.max_epochs",
    "pretrain_max_steps": "pretrain.max_steps",
    "train_init": "train.init",
    "train_lr": "train.lr",
    "train_max_epochs": "train.max_epochs",
    "train_max_steps": "train.max_steps",
    "train_backbone": "train.backbone",
    "train_label_fraction": "train.label_fraction",
    "train_seed": "train.seed",
    "register_margin": "register.margin",
    "register_model_name": "register.model_name",
}
# KFP parameters cannot be None (kfp.local refuses a None argument): these values stand for it.
NONE_SENTINELS: dict[str, Any] = {
    "pretrain_max_steps": 0,
    "train_max_steps": 0,
    "register_model_name": "",
}

# What each cached step reads, as in dvc.yaml's `params:` (a change elsewhere keeps the cache).
STEP_SECTIONS: dict[str, dict[str, list[str] | None]] = {
    "data": {"data": None, "split": ["fractions"]},  # synth follows split.fractions
    "validate": {"validate": None},
    "split": {"split": None},
}

TAG_KFP_RUN = "medssl.kfp.run_id"
TAG_KFP_STATE = "medssl.kfp.state"
TAG_DATA_SOURCE = "medssl.data.source"


class ValidationFailed(DataContractError):
    """The dataset failed validation: the pipeline step fails and the pipeline stops."""


# ------------------------------------------------------------------------------ configuration


def scalar_defaults(params: Params) -> dict[str, Any]:
    """The pipeline's scalar parameters as `params` sets them (None → its sentinel)."""
    flat = params.dump()
    out = {}
    for name, key in SCALAR_PARAMS.items():
        section, field = key.split(".")
        value = flat[section][field]
        out[name] = NONE_SENTINELS[name] if value is None else value
    return out


def params_argument(params: Params) -> dict[str, Any]:
    """The resolved config as a KFP `dict` argument: KFP cannot carry null inside a mapping, so
    None values are left out (their built-in default is None too, checked here)."""
    defaults = Params().dump()

    def strip(values: Mapping[str, Any], default: Any, path: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            dflt = default.get(key) if isinstance(default, Mapping) else None
            if value is None:
                if dflt is not None:
                    raise ConfigError(
                        f"{path}{key}: null differs from its default {dflt!r}; a pipeline "
                        "parameter cannot carry null"
                    )
                continue
            out[key] = strip(value, dflt, f"{path}{key}.") if isinstance(value, Mapping) else value
        return out

    return strip(params.dump(), defaults, "")


def resolve_params(params: Mapping[str, Any] | None = None, **scalars: Any) -> Params:
    """The run's config: built-in defaults, then the sections of `params` (key by key), then the
    scalar pipeline parameters (sentinels mean None). One-line ConfigError when invalid."""
    # load_params lays the file over the defaults and gives the one-line errors of the CLI
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (params or {}).items()}
    for name, value in scalars.items():
        key = SCALAR_PARAMS.get(name)
        if key is None:
            raise ConfigError(f"unknown pipeline parameter {name!r}")
        if name in NONE_SENTINELS and value == NONE_SENTINELS[name]:
            value = None
        section, field = key.split(".")
        raw.setdefault(section, {})[field] = value
    with tempfile.TemporaryDirectory(prefix="medssl-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return load_params(path, required=True)


def step_params(params: Mapping[str, Any]) -> Params:
    """`resolve_params` for a step that writes a cache: a relative train/pretrain.cache_dir moves
    to the temp folder when the working directory is read-only (the image's WORKDIR)."""
    cfg = resolve_params(params)
    for section in (cfg.train, cfg.pretrain):
        if not Path(section.cache_dir).is_absolute() and not os.access(Path.cwd(), os.W_OK):
            section.cache_dir = str(Path(tempfile.gettempdir()) / section.cache_dir)
    return cfg


def experiment_name(params: Mapping[str, Any]) -> str:
    """register.experiment of a (possibly invalid) params mapping; never raises."""
    section = params.get("register") if isinstance(params, Mapping) else None
    name = section.get("experiment") if isinstance(section, Mapping) else None
    return str(name) if name else Params().register_.experiment


def step_config(params: Params, step: str) -> dict[str, Any]:
    """The part of the resolved config a cached step reads (its cache key holds nothing else)."""
    dumped = params.dump()
    out: dict[str, Any] = {}
    for section, keys in STEP_SECTIONS[step].items():
        values = dumped[section]
        values = values if keys is None else {k: values[k] for k in keys}
        out[section] = {k: v for k, v in values.items() if v is not None}
    return out


# ------------------------------------------------------------------------------ data


def prepare_data(
    out_dir: Path, params: Params, data_repo: str = "", data_rev: str = "", data_path: str = ""
) -> dict[str, str]:
    """Fetch `data_path` of the DVC-tracked git repo `data_repo` at `data_rev` into out_dir, or,
    without a repo, write the embedded synthetic archive (`data.*`). Returns MLflow tags saying
    which data it is."""
    out_dir = Path(out_dir)
    if data_repo.strip():
        from medssl.stages.fetch import fetch_dataset

        if not data_path.strip():
            raise ConfigError("data_path: give the dataset folder inside the data repository")
        result = fetch_dataset(data_repo.strip(), data_rev.strip() or None, data_path, out_dir)
        print(result.describe())
        tags = {**result.as_tags(), TAG_DATA_SOURCE: "dvc"}
    else:
        if data_rev.strip():
            raise ConfigError(f"data_rev={data_rev!r} needs data_repo (the git repository)")
        from medssl.stages.synth import synth

        result = synth(out_dir, params.data, params.split, progress=False)
        print(f"synthesized {result.images} images ({params.data.size}) → {out_dir}")
        tags = {
            TAG_DATA_SOURCE: "synth",
            "medssl.data.kind": params.data.kind,
            "medssl.data.size": params.data.size,
            "medssl.data.seed": str(params.data.seed),
        }
    from medssl.tracking.runs import TAG_DATA_HASH, TAG_DATA_HASH_SOURCE, data_hash

    found = data_hash(out_dir)
    if found:
        tags[TAG_DATA_HASH], tags[TAG_DATA_HASH_SOURCE] = found
    return tags


def link_split_images(split_dir: Path, images_dir: Path, work_dir: Path) -> Path:
    """The split stage's output points at its input's images by a relative path, which holds
    where both artifacts sit side by side (kfp.local, the cluster's artifact mirror). When it
    does not resolve, return a copy of split_dir's tables (symlinked) whose dataset.yaml points
    at `images_dir` instead."""
    from medssl.data.contract import INFO_FILE, image_dir, read_info

    split_dir, images_dir = Path(split_dir), Path(images_dir)
    info = read_info(split_dir)
    if image_dir(split_dir, info).is_dir():
        return split_dir
    source = read_info(images_dir)
    target = image_dir(images_dir, source)
    view = Path(work_dir)
    view.mkdir(parents=True, exist_ok=True)
    for item in split_dir.iterdir():
        if item.name != INFO_FILE and not (view / item.name).exists():
            (view / item.name).symlink_to(item.resolve())
    raw = yaml.safe_load((split_dir / INFO_FILE).read_text())
    raw["image_root"] = os.path.relpath(target.resolve(), view.resolve())
    (view / INFO_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return view


# ------------------------------------------------------------------------------ validation


def check_validation(result: ValidationResult) -> None:
    """Raise ValidationFailed (one line) when the dataset failed validation."""
    if result.success:
        return
    names = ", ".join(result.failed_names[:5]) or "image checks"
    more = f" and {len(result.failures) - 5} more" if len(result.failures) > 5 else ""
    raise ValidationFailed(
        f"dataset failed validation: {len(result.failures)} of {result.n_expectations} "
        f"expectations ({names}{more}); report: {result.report_path}"
    )


def validation_markdown(result: ValidationResult) -> str:
    """The KFP UI's Markdown report of a validation: the verdict, then one row per expectation."""
    from medssl.stages.validate import summary

    report = json.loads(Path(result.report_path).read_text())
    rows = ["| expectation | view | result | unexpected | examples |", "|---|---|---|---:|---|"]
    for e in report.get("expectations", []):
        state = "skipped" if e.get("skipped") else ("ok" if e.get("success") else "**FAILED**")
        count = e.get("unexpected_count")
        examples = "; ".join(str(x) for x in (e.get("examples") or [])[:5])
        cells = [
            e.get("name"),
            e.get("view"),
            state,
            "" if count is None else count,
            examples or e.get("error") or "",
        ]
        rows.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(["# Data validation", "", "```", summary(result), "```", "", *rows, ""])


def evaluation_markdown(report_md: str, out_dir: Path) -> str:
    """report.md for the KFP UI's Markdown viewer: its PNG images embedded as data URIs."""

    def embed(match: re.Match[str]) -> str:
        path = Path(out_dir) / match.group(2)
        if path.suffix.lower() != ".png" or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE.sub(embed, report_md)


def predictions_markdown(out_dir: Path) -> str:
    """The KFP UI's Markdown summary of a batch prediction: model, data, counts, and per class
    how many images were decided positive."""
    import pandas as pd

    from medssl.stages.predict import PREDICTIONS_FILE, SUMMARY_FILE

    summary = json.loads((Path(out_dir) / SUMMARY_FILE).read_text())
    table = pd.read_parquet(Path(out_dir) / PREDICTIONS_FILE)
    model = summary["model"]
    who = (
        f"{model.get('model_name')} v{model.get('model_version')}"
        if model.get("model_version")
        else model.get("model_uri", "")
    )
    rows = ["| class | threshold | images decided positive | share |", "|---|---:|---:|---:|"]
    for c, t in zip(summary["classes"], summary["thresholds"], strict=True):
        positive = int(table[c].sum())
        threshold = "never" if t is None else f"{t:.3g}"
        rows.append(f"| {c} | {threshold} | {positive:,} | {positive / max(len(table), 1):.1%} |")
    return "\n".join(
        [
            "# Batch predictions",
            "",
            f"- model: {_md_cell(who)}",
            f"- data: {_md_cell(summary['data'])}",
            f"- images: {summary['images']:,} at {summary['images_per_s']:.0f} img/s on "
            f"{summary['device']}",
            "",
            *rows,
            "",
        ]
    )


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _md_cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


# ------------------------------------------------------------------------------ MLflow parent run


@contextmanager
def pipeline_run_env(parent_run_id: str) -> Iterator[None]:
    """MEDSSL_PIPELINE_RUN_ID set to the pipeline's parent run while a stage runs, so its
    `stage_run` nests under it (medssl.tracking.runs)."""
    from medssl.tracking.runs import PIPELINE_RUN_ENV

    old = os.environ.get(PIPELINE_RUN_ENV)
    os.environ[PIPELINE_RUN_ENV] = parent_run_id
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PIPELINE_RUN_ENV, None)
        else:
            os.environ[PIPELINE_RUN_ENV] = old


def start_pipeline_run(kfp_run_id: str, params: Params, data_tags: Mapping[str, str]) -> str:
    """Create the MLflow parent run of a KFP pipeline run (tagged with the KFP run id and the data
    revision, the resolved config as params); its id. Empty when tracking is off."""
    from medssl.tracking.runs import (
        TAG_KIND,
        MlflowTracker,
        base_tags,
        client,
        experiment_id,
        git_commit,
        tracking_enabled,
    )

    if not tracking_enabled():
        return ""
    mc = client()
    exp = experiment_id(mc, params.register_.experiment)
    existing = _kfp_parent_run(mc, kfp_run_id)
    if existing:  # a retried start-run step: the parent run of this KFP run already exists
        print(f"MLflow parent run {existing} (experiment {params.register_.experiment!r})")
        return existing
    data = {k: str(v) for k, v in data_tags.items() if k.startswith("medssl.data.")}
    # what stage_run records on a parent (version, user, commit: the image has no repository,
    # the data revision is in data_tags)
    tags = {**base_tags(git_commit(), None), **data, TAG_KIND: "pipeline", TAG_KFP_RUN: kfp_run_id}
    run = mc.create_run(exp, run_name=f"kfp-{kfp_run_id[:12]}", tags=tags)
    MlflowTracker(mc, run.info.run_id, stage="pipeline").log_params(params.dump())
    print(f"MLflow parent run {run.info.run_id} (experiment {params.register_.experiment!r})")
    return run.info.run_id


def finish_pipeline_run(kfp_run_id: str, experiment: str, state: str) -> str:
    """The exit handler: end the parent run of this KFP run FINISHED when the pipeline
    SUCCEEDED, else FAILED (KILLED when CANCELLED), creating a FAILED parent when the pipeline
    failed before it had one. Records the KFP state, never an error message (it may quote
    data). Returns the MLflow status set ('' when tracking is off)."""
    from medssl.tracking.runs import TAG_KIND, client, experiment_id, tracking_enabled

    if not tracking_enabled():
        return ""
    status = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED"}.get(state.upper(), "FAILED")
    mc = client()
    run_id = _kfp_parent_run(mc, kfp_run_id)
    if run_id is None:
        if status == "FINISHED":
            return status  # tracking was off in the steps: nothing to close
        run_id = mc.create_run(
            experiment_id(mc, experiment),
            run_name=f"kfp-{kfp_run_id[:12]}",
            tags={TAG_KIND: "pipeline", TAG_KFP_RUN: kfp_run_id},
        ).info.run_id
    mc.set_tag(run_id, TAG_KFP_STATE, state)
    mc.set_terminated(run_id, status)
    print(f"MLflow parent run {run_id}: {status} (pipeline {state})")
    return status


def _kfp_parent_run(mc: Any, kfp_run_id: str) -> str | None:
    """The MLflow parent run already created for this KFP run, if any."""
    from medssl.tracking.runs import TAG_KIND

    exps = [e.experiment_id for e in mc.search_experiments()]
    if not exps:
        return None
    runs = mc.search_runs(
        exps,
        filter_string=f"tags.`{TAG_KFP_RUN}` = '{kfp_run_id}' and tags.`{TAG_KIND}` = 'pipeline'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
