"""The `medssl` command line: parse, resolve the config, call a stage, print, set the exit code.

Exit codes (medssl.errors): 0 success, 1 the data failed validation, 2 usage / config / input
data, 3 environment (MLflow, S3, KFP, output folder, memory), 70 a bug, 130 interrupted. Errors are
one line; `--debug` (or MEDSSL_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.exceptions import TyperException

from medssl import __version__
from medssl.cli_options import ParamsOption, SetOption
from medssl.cli_pipeline import pipeline_app
from medssl.config import DEFAULT_PARAMS, Params, load_params
from medssl.errors import (
    DEBUG_ENV,
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    debug_enabled,
    one_line,
    translate,
)

app = typer.Typer(
    name="medssl",
    help="Self- and semi-supervised learning on mostly unlabeled medical-image archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Generate and inspect datasets.", no_args_is_help=True)
config_app = typer.Typer(help="Show the resolved configuration.", no_args_is_help=True)
models_app = typer.Typer(
    help="List, compare and promote registered models (MLflow).", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(models_app, name="models")
study_app = typer.Typer(
    help="Studies that reproduce a paper's figure (many runs, one report).", no_args_is_help=True
)
app.add_typer(study_app, name="study")
app.add_typer(pipeline_app, name="pipeline")  # kfp is imported inside its commands

TrackOption = Annotated[
    bool,
    typer.Option(
        "--track/--no-track",
        help="Log the stage to MLflow (MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
    ),
]
ModelNameOption = Annotated[
    str | None,
    typer.Option(
        "--name", help="Registered model name (default: register.model_name or abdominal-organs)."
    ),
]


def _params(params: Path, overrides: list[str] | None, **flags: object) -> Params:
    """Resolve params.yaml + -S overrides + explicit flags (flags win)."""
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_params(params, [*(overrides or []), *extra])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help=f"Show the traceback of an error (or set {DEBUG_ENV}=1)."),
    ] = False,
) -> None:
    """medssl: validated, versioned, tracked self-/semi-supervised pipelines.

    Exit codes: 0 ok, 1 validation failed, 2 usage/config/input data, 3 environment (MLflow,
    S3, Kubeflow, output folder, memory), 70 a bug, 130 interrupted."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


@config_app.command("show")
def config_show(set_: SetOption = None, params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Print the resolved configuration (params.yaml + overrides) as JSON."""
    typer.echo(json.dumps(_params(params, set_).dump(), indent=2))


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    kind: Annotated[
        str | None,
        typer.Option(
            help="abdominal-us | cardiac-mr | breast-us | chest-xray (default: data.kind)."
        ),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(
            help="abdominal-us: tiny (~300 img, 32 px) | small (~5k, 64 px) | paper (89,830, "
            "128 px); cardiac-mr: tiny (~300, 32 px) | small (~4k, 13 classes, 64 px) | small-3 "
            "(~3k, LA 2/3/4ch, 64 px) | paper (23,943, 128 px) | paper-3 (47,637, 128 px); "
            "breast-us: tiny (~110, 32 px) | small (~1.7k, 64 px) | paper (5,911, 128 px); "
            "chest-xray: tiny (40 with findings + 80 without, 64 px) | small (1,200 + 2,400, "
            "128 px) | paper (4,394 + 8,788, 512 px)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: data.seed).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes; 0 = all cores (default: data.workers).")
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Write a synthetic archive in the data contract (images, manifest, reports or boxes)."""
    cfg = _params(
        params,
        set_,
        **{"data.kind": kind, "data.size": size, "data.seed": seed, "data.workers": workers},
    )
    from medssl.stages.synth import synth

    start = time.perf_counter()
    result = synth(out, cfg.data, cfg.split)
    typer.echo(
        f"wrote {result.images:,} images from {result.exams:,} exams of {result.patients:,} "
        f"patients to {out} in {time.perf_counter() - start:.1f}s"
    )
    typer.echo("  " + ", ".join(f"{k}: {v:,}" for k, v in result.splits.items()))


@data_app.command("fetch")
def data_fetch(
    repo: Annotated[str, typer.Argument(help="Git URL or local path of the DVC data repository.")],
    path: Annotated[str, typer.Argument(help="Dataset folder inside the repository.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (replaced).")],
    rev: Annotated[
        str | None, typer.Option(help="Git revision (default: the default branch; HEAD of a path).")
    ] = None,
    remote: Annotated[str | None, typer.Option(help="DVC remote (default: the repo's).")] = None,
) -> None:
    """Download a DVC-tracked dataset folder at a git revision from the repository's remote."""
    from medssl.stages.fetch import fetch_dataset

    result = fetch_dataset(repo, rev, path, out, remote=remote, progress=True)
    typer.echo(result.describe())


@data_app.command("pairs")
def data_pairs(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder with reports (a split archive).")],
    clusters: Annotated[
        Path,
        typer.Option(
            help="`medssl pretrain` folder of a clustering method (assignments, soft labels)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Image-text dataset folder to write.")],
    organ: Annotated[str | None, typer.Option(help="Organ class (default: pairs.organ).")] = None,
    threshold: Annotated[
        str | None,
        typer.Option(
            help="Soft-label share above which a cluster is the organ's, or auto: the organ's "
            "share of the dev (val) images Algorithm 1 labelled the clusters with "
            "(default: pairs.threshold)."
        ),
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Paper 002 §3: pair the organ's images (deep clusters, or labels) with the organ's report
    sentences of their exam; writes an image-text dataset, its WordPiece tokenizer, the mention
    table and the Fig. 2 flow (flow.json, flow.png)."""
    cfg = _params(params, set_, **{"pairs.organ": organ, "pairs.threshold": threshold})
    from medssl.stages.pairs import make_pairs

    typer.echo(make_pairs(dataset, clusters, out, cfg.pairs).describe())


@data_app.command("organ-task")
def data_organ_task(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder with splits and labels.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Binary dataset folder to write.")],
    organ: Annotated[str | None, typer.Option(help="Organ class (default: pairs.organ).")] = None,
    target: Annotated[
        str | None,
        typer.Option(help="0/1 attribute column that is the target (default: pairs.target)."),
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Paper 002 §4.3: the labeled images of an organ as a binary dataset (e.g. normal/abnormal
    kidney from `kidney_abnormal`), splits kept, images shared."""
    cfg = _params(params, set_, **{"pairs.organ": organ, "pairs.target": target})
    from medssl.stages.pairs import organ_task

    typer.echo(organ_task(dataset, out, cfg.pairs).describe())


@app.command("validate")
def validate_cmd(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (contains dataset.yaml).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder (default: DATASET-validation beside it)."),
    ] = None,
    images: Annotated[
        bool | None, typer.Option("--images/--no-images", help="Check image files too.")
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Check a dataset against the data contract; exit 1 if any expectation fails."""
    cfg = _params(params, set_, **{"validate.check_images": images})
    from medssl.stages.validate import summary, validate

    out = out or dataset.parent / f"{dataset.name}-validation"
    result = validate(dataset, out, cfg.validate_)
    typer.echo(summary(result))
    if not result.success:
        raise typer.Exit(1)


@app.command("split")
def split_cmd(
    dataset: Annotated[Path, typer.Argument(help="Validated dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split dataset folder to write.")],
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Patient-disjoint splits and nested label-fraction subsets (10/20/50/100 %)."""
    cfg = _params(params, set_)
    from medssl.stages.split import split

    result = split(dataset, out, cfg.split)
    made = "made" if result.resplit else "kept"
    typer.echo(f"{made} splits → {out}")
    for name, n in result.images.items():
        typer.echo(
            f"  {name:<9} {n:>7,} images {result.exams[name]:>6,} exams "
            f"{result.patients[name]:>6,} patients"
        )
    for f, counts in result.label_fractions.items():
        typer.echo(
            f"  train subset {float(f):>4.0%}: {counts['images']:,} images, "
            f"{counts['exams']:,} exams"
        )


@app.command("ingest")
def ingest_cmd(
    dicom_dir: Annotated[Path, typer.Argument(help="Folder of the DICOM export (recursive).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Dataset folder to write or grow.")
    ] = Path("data/ingested"),
    reports: Annotated[
        Path | None,
        typer.Option("--reports", help="Reports CSV (study_instance_uid|accession_number, text…)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes; 0 = all cores (default: ingest.workers).")
    ] = None,
    locate: Annotated[
        str | None,
        typer.Option("--locate", help="Print the export path of a quarantined file_key, only."),
    ] = None,
    track: Annotated[
        bool, typer.Option("--track/--no-track", help="Log counts and the report to MLflow.")
    ] = False,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """DICOM export → de-identified, B-mode-only dataset (salt from $MEDSSL_INGEST_SALT)."""
    cfg = _params(params, set_, **{"ingest.workers": workers})
    from medssl.stages.ingest import ingest
    from medssl.stages.ingest import locate as locate_file

    if locate is not None:
        found = locate_file(dicom_dir, locate, cfg.ingest)
        typer.echo(found if found is not None else f"no file of {dicom_dir} has key {locate}")
        raise typer.Exit(0 if found is not None else 1)
    with _tracked("ingest", cfg, out, track) as tracker:
        result = ingest(dicom_dir, out, cfg.ingest, reports=reports, tracker=tracker)
    typer.echo(result.describe())


def _tracked(stage: str, cfg: Params, dataset: Path | None, track: bool):
    """The MLflow stage run (nested in the pipeline's parent run), or a no-op tracker."""
    from medssl.tracking import tracked_stage

    return tracked_stage(stage, cfg, dataset, track)


@app.command("train")
def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="Split dataset folder (from `medssl split`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "models/supervised"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.pt.")
    ] = False,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Train a model with `train.method` (one loop for every method); early stopping on val F1."""
    cfg = _params(params, set_)
    from medssl.data.contract import read_info
    from medssl.stages.train import train

    read_info(dataset)  # a wrong path is the first thing to say, before MLflow is contacted
    with _tracked("train", cfg, dataset, track) as tracker:
        result = train(
            dataset,
            out,
            cfg.train,
            resume=resume,
            tracker=tracker,
            hparams=cfg.method_params(cfg.train.method),
        )
    typer.echo(result.describe())


@app.command("pretrain")
def pretrain_cmd(
    dataset: Annotated[Path, typer.Argument(help="Split dataset folder (from `medssl split`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoder folder to write.")] = Path(
        "models/pretrain"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.pt.")
    ] = False,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Pre-train an encoder with `pretrain.method` (pica, lsd) on the unlabeled rows; writes
    encoder.pt for `train -S train.init=checkpoint -S train.weights=OUT/encoder.pt`.

    Hyperparameters: the `pretrain` section (budget, batch, backbone) and the method's own
    section (`-S lsd.lambda=2 -S lsd.alpha=1.1 -S lsd.clusters=12`)."""
    cfg = _params(params, set_)
    from medssl.data.contract import read_info
    from medssl.stages.pretrain import pretrain

    read_info(dataset)  # a wrong path is the first thing to say, before MLflow is contacted
    with _tracked("pretrain", cfg, dataset, track) as tracker:
        result = pretrain(
            dataset,
            out,
            cfg.pretrain,
            hparams=cfg.method_params(cfg.pretrain.method),
            resume=resume,
            tracker=tracker,
            evaluate_cfg=cfg.evaluate,
        )
    typer.echo(result.describe())


@app.command("evaluate")
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (from `medssl train`).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder to write (default: MODEL_DIR/eval)."),
    ] = None,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Per-class thresholds on val, test P/R/F1 (paper 000 Table 2 layout) with a bootstrap CI."""
    cfg = _params(params, set_)
    from medssl.stages.evaluate import evaluate, format_table

    with _tracked("evaluate", cfg, None, track) as tracker:
        result = evaluate(model_dir, out, cfg.evaluate, tracker=tracker)
    typer.echo(format_table(result))
    typer.echo(f"wrote {result.out_dir}/")


@app.command("register")
def register_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (from `medssl train`).")],
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval", help="The model's evaluate folder (default: MODEL_DIR/eval)."),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset",
            help="Split dataset the model was tested on; the champion is scored on it "
            "(default: the one MODEL_DIR/train.json records).",
        ),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option("--record", help="Also write the version and gate decision to this JSON."),
    ] = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Log and register the model in MLflow as `challenger`; promote it to `champion` if it beats
    the champion by `register.margin` on `register.metric`, the champion being scored on the same
    test split first (register.rescore_champion)."""
    cfg = _params(params, set_)
    from medssl.stages.register import check_inputs, register

    _, dataset, *_ = check_inputs(model_dir, eval_dir, dataset, cfg.register_)  # before MLflow
    with _tracked("register", cfg, dataset, True) as tracker:
        result = register(
            model_dir, eval_dir, dataset, cfg.register_, tracker=tracker, record=record
        )
    typer.echo(result.describe())
    typer.echo(f"MLflow UI: mlflow ui --backend-store-uri {_tracking_uri()}")


@app.command("predict")
def predict_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="A model folder (from `medssl train`, evaluated) or a registered version: "
            "models:/abdominal-organs@champion, models:/abdominal-organs/3."
        ),
    ],
    data: Annotated[
        Path,
        typer.Argument(
            help="A dataset folder, a folder of PNG/JPEG images, or a DICOM export (ingested "
            "and de-identified first; salt from $MEDSSL_INGEST_SALT)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (replaced).")],
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Label images with a model: per image and class the probability and the 0/1 decision at
    the model's val-tuned threshold (DIR/predictions.parquet). An interrupted run continues
    where it stopped when run again."""
    cfg = _params(params, set_)
    from medssl.stages.predict import predict

    result = predict(model, data, out, cfg.predict, ingest=cfg.ingest)
    typer.echo(result.describe())


@app.command("tune")
def tune_cmd(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Split dataset folder (from `medssl split`), or the storage URI of one "
            "(s3://…: every node fetches it)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Sweep folder to write (default: reports/tune/NAME)."),
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="A named sweep of params.yaml's tune.presets.")
    ] = None,
    space: Annotated[
        list[str] | None,
        typer.Option(
            "-S",
            "--space",
            metavar="SECTION.KEY=SPEC",
            help="A key of the search space (repeatable): a grid [a,b,c], uniform(lo,hi), "
            "loguniform(lo,hi), randint(lo,hi), choice([a,b]); a plain value is fixed for "
            "every trial. `pica.lambda,lsd.lambda=[1,2]` sets both keys to one value.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Sweep name (default: preset or sweep).")
    ] = None,
    chain: Annotated[
        str | None,
        typer.Option("--chain", help="A trial: pretrain | train | pretrain-train (tune.chain)."),
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Rank trials by (tune.metric).")
    ] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="max | min (tune.mode).")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per configuration.")] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Samples of the random part (tune.num_samples).")
    ] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="asha | fifo.")] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="CPUs per trial.")] = None,
    gpu: Annotated[float | None, typer.Option("--gpu", help="GPUs per trial.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Trials at once (0: as resources allow).")
    ] = None,
    max_failures: Annotated[
        int | None,
        typer.Option("--max-failures", help="Restarts of a crashed trial (tune.max_failures)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="A Ray cluster's dashboard (http://head:8265): the sweep runs there as a Ray Job.",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="Trial storage: a folder or s3://bucket/prefix (tune.storage)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue a killed sweep in OUT (finished trials kept)."),
    ] = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the best configuration into the params file.")
    ] = False,
    track: TrackOption = True,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Sweep params.yaml keys with Ray Tune: every trial runs the pipeline's stage functions
    (`tune.chain`), reports each epoch (ASHA stops bad trials early) and is a child run of one
    MLflow sweep run; writes results.csv, summary.md, best.json and sweep.png to OUT.

    Example (paper 000 Fig. 5): `medssl tune data/splits --preset lambda-sensitivity`;
    your own: `medssl tune data/splits -S lsd.lambda=[0.5,1,2] --seeds 2 --metric val_nmi`."""
    from medssl.stages.tune import submit_sweep, tune_sweep
    from medssl.tuning import apply_to_params, parse_cli_space, refuse_test_metric

    cfg = _params(params, None)
    flags = {
        "chain": chain, "metric": metric, "mode": mode, "seeds": seeds, "num_samples": samples,
        "scheduler": scheduler, "max_concurrent": max_concurrent, "max_failures": max_failures,
        "address": address,
        "storage": storage,
    }  # fmt: skip
    tune_cfg = cfg.tune.with_preset(preset)
    updates = {k: v for k, v in flags.items() if v is not None}
    resources = _resources(tune_cfg.resources, cpu, gpu)
    tune_cfg = tune_cfg.with_updates({**updates, "resources": resources})
    cli_space = parse_cli_space(space or [])
    sweep_name = name or preset or "sweep"
    out_dir = out or Path("reports/tune") / sweep_name
    if apply:
        refuse_test_metric(tune_cfg.metric, "--apply")
    if tune_cfg.address and not os.environ.get("MEDSSL_TUNE_JOB"):
        from medssl.stages.tune import plan_sweep

        plan_sweep(cfg, tune_cfg, cli_space)  # bad input: one line here, not in the job log
        typer.echo(
            submit_sweep(
                tune_cfg, dataset, out_dir, params, preset, cli_space, sweep_name,
                resume=resume, track=track,
            )
        )  # fmt: skip
        best = json.loads((Path(out_dir) / "best.json").read_text())
        if apply and best:
            changed = apply_to_params(params, best["params"])
            typer.echo(f"applied to params: {', '.join(changed) or 'nothing changed'}")
        return
    from medssl.data.contract import read_info

    if "://" not in str(dataset):  # a storage URI is fetched by the sweep
        read_info(dataset)
    result = tune_sweep(
        dataset, out_dir, cfg, tune_cfg, cli_space, name=sweep_name, resume=resume, track=track
    )
    if apply and result.best:
        result.applied = apply_to_params(params, result.best["params"])
    typer.echo(result.describe())


@study_app.command("label-fractions")
def study_label_fractions(
    dataset: Annotated[Path, typer.Argument(help="Split dataset folder (from `medssl split`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write.")] = Path(
        "reports/studies/label-fractions"
    ),
    encoder: Annotated[
        Path | None,
        typer.Option(
            "--encoder",
            help="A pretrain run's encoder.pt for strategies 2 and 4 (default: pre-train "
            "once into OUT/encoder with params.yaml's pretrain section).",
        ),
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per cell.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Cells at once (0: as CPUs allow).")
    ] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="CPUs per cell.")] = None,
    gpu: Annotated[float | None, typer.Option("--gpu", help="GPUs per cell.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed study: finished cells are kept.")
    ] = False,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Paper 000 Fig. 6: strategies 1-4 (supervised or FixMatch One-/Two-Head, from random
    weights or the deep-clustering encoder) at every label fraction × seeds, as one `medssl
    tune` sweep (preset `label-fractions`: budget and grid in params.yaml); writes study.md
    (mean and 95 % CI per cell, the paper's paired effects) and fig6.png to OUT."""
    from medssl.stages.study import label_fraction_study

    cfg = _params(params, set_)
    updates = _study_updates(cfg, "label-fractions", seeds, max_concurrent, cpu, gpu)
    result = label_fraction_study(
        dataset, out, cfg, encoder=encoder, updates=updates, resume=resume, track=track
    )
    typer.echo(result.describe())


@study_app.command("cv")
def study_cv(
    dataset: Annotated[
        Path,
        typer.Argument(help="A binary dataset with lesion ids (e.g. data synth --kind breast-us)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write.")] = Path(
        "reports/studies/cv"
    ),
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per cell.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Cells at once (0: as CPUs allow).")
    ] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="CPUs per cell.")] = None,
    gpu: Annotated[float | None, typer.Option("--gpu", help="GPUs per cell.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed study: finished cells are kept.")
    ] = False,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Paper 004 Tables 1-2: lesion recognition against its baseline, instance recognition and
    the negative-set ablations, by 5-fold cross-validation grouped by patient, as one `medssl
    tune` sweep (preset `cv`: variants, folds and budget in params.yaml); writes cv.md (mean ±
    std per variant beside the paper, the paper's comparisons as paired differences) and cv.png
    to OUT."""
    from medssl.stages.cv_study import PRESET, cv_study

    cfg = _params(params, set_)
    updates = _study_updates(cfg, PRESET, seeds, max_concurrent, cpu, gpu)
    result = cv_study(dataset, out, cfg, updates=updates, resume=resume, track=track)
    typer.echo(result.describe())


@study_app.command("pretrain-split")
def study_pretrain_split(
    dataset: Annotated[
        Path,
        typer.Argument(help="A detection dataset (e.g. data synth --kind chest-xray)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder to write.")] = Path(
        "reports/studies/pretrain-split"
    ),
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per cell.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Cells at once (0: as CPUs allow).")
    ] = None,
    cpu: Annotated[float | None, typer.Option("--cpu", help="CPUs per cell.")] = None,
    gpu: Annotated[float | None, typer.Option("--gpu", help="GPUs per cell.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed study: finished cells are kept.")
    ] = False,
    track: TrackOption = True,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Paper 003 Table I-II and Fig. 4: the detector from random init on every label (preset
    `pretrain-split-baseline`), then for each p SimCLR on p % of train (labels unread) and the
    detector fine-tuned from it on the other 1 − p (preset `pretrain-split`), as `medssl tune`
    sweeps; writes study.md (Table I-II beside the paper, each row's mAP difference to the
    baseline with a paired image-bootstrap CI) and fig4.png to OUT."""
    from medssl.stages.split_study import PRESET, pretrain_split_study

    cfg = _params(params, set_)
    updates = _study_updates(cfg, PRESET, seeds, max_concurrent, cpu, gpu)
    result = pretrain_split_study(dataset, out, cfg, updates=updates, resume=resume, track=track)
    typer.echo(result.describe())


def _study_updates(
    cfg: Params,
    preset: str,
    seeds: int | None,
    max_concurrent: int | None,
    cpu: float | None,
    gpu: float | None,
) -> dict[str, object]:
    """A study's tune settings from its flags, over the preset's."""
    updates: dict[str, object] = {}
    if seeds is not None:
        updates["seeds"] = seeds
    if max_concurrent is not None:
        updates["max_concurrent"] = max_concurrent
    updates["resources"] = _resources(cfg.tune.with_preset(preset).resources, cpu, gpu)
    return updates


def _resources(base: dict, cpu: float | None, gpu: float | None) -> dict:
    """A trial's resources with the --cpu/--gpu flags over `base`."""
    flags = {"cpu": cpu, "gpu": gpu}
    return {**base, **{k: v for k, v in flags.items() if v is not None}}


def _tracking_uri() -> str:
    from medssl.tracking import tracking_uri

    return tracking_uri()


def _model_name(name: str | None, params: Path, set_: list[str] | None) -> str:
    from medssl.stages.register import DEFAULT_MODEL_NAME

    return name or _params(params, set_).register_.model_name or DEFAULT_MODEL_NAME


@models_app.command("list")
def models_list(
    name: ModelNameOption = None, set_: SetOption = None, params: ParamsOption = DEFAULT_PARAMS
) -> None:
    """Registered versions with their aliases and key metrics."""
    from medssl.tracking.registry import format_versions, list_versions

    model = _model_name(name, params, set_)
    typer.echo(format_versions(model, list_versions(model)))


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="Version number or alias (champion, challenger).")],
    b: Annotated[str, typer.Argument(help="Version number or alias.")],
    name: ModelNameOption = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Two versions side by side: metrics per class, config differences, data hash, commit."""
    from medssl.tracking.registry import compare, format_compare

    model = _model_name(name, params, set_)
    typer.echo(format_compare(compare(model, a, b)))


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version number to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the version's tags).")],
    name: ModelNameOption = None,
    set_: SetOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Manual promotion to `champion`, logged as such on the version."""
    from medssl.tracking.registry import promote

    model = _model_name(name, params, set_)
    typer.echo(promote(model, version, reason).describe())


def run(args: list[str]) -> int:
    """Run the command line `args` and return its exit code (medssl.errors): a user or
    environment error is one line on stderr, a bug prints its traceback."""
    try:
        rv = app(args=args, prog_name="medssl", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as exc:
        return exc.exit_code
    except SystemExit as exc:  # click exits by itself on a closed stdout (`medssl -h | head`)
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else 1
    except (click.exceptions.Abort, typer.Abort):  # click's form of Ctrl-C
        typer.secho("error: interrupted", err=True, fg="red")
        return EXIT_INTERRUPTED
    # typer >= 0.20 vendors click: its usage errors derive from TyperException, not click's
    except (click.ClickException, TyperException) as exc:
        if hasattr(exc, "show"):
            exc.show()
        else:
            typer.secho(f"error: {exc.format_message()}", err=True, fg="red")
        return exc.exit_code
    except BaseException as exc:
        return _report(exc)
    return rv if isinstance(rv, int) else EXIT_OK


def _report(exc: BaseException) -> int:
    error = translate(exc)
    if error is None or debug_enabled():
        traceback.print_exception(exc)
    if error is None:
        typer.secho(
            f"error: internal error ({type(exc).__name__}: {one_line(exc)}); this is a bug: "
            "please report it with the traceback above",
            err=True,
            fg="red",
        )
        return EXIT_BUG
    typer.secho(f"error: {one_line(error, 1000)}", err=True, fg="red")
    return error.exit_code


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (Kubernetes stopping a pod, `kill`) ends a command like Ctrl-C: outputs stay
    complete or absent, a training checkpoint is kept."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point (exit codes: medssl.errors)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # keep stage output readable
    with contextlib.suppress(ValueError):  # not the main thread (embedded use)
        signal.signal(signal.SIGTERM, _terminate)
    sys.exit(run(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    main()
