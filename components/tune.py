"""tune: a Ray Tune sweep (`medssl tune`) on the split dataset, and the run's params with the best
configuration applied for the steps after it."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune(
    splits: Input[Dataset],
    images: Input[Dataset],
    params: dict,
    parent_run_id: str,
    kfp_run_id: str,
    preset: str,
    metric: str,
    ray_address: str,
    storage: str,
    trial_cpus: float,
    trial_gpus: float,
    max_concurrent: int,
    summary: Output[Markdown],
    metrics: Output[Metrics],
    sweep: Output[Artifact],
) -> NamedTuple("TuneOutputs", [("params", dict), ("best", dict)]):
    """Sweep `preset` of tune.presets ('' = the tune section as it is), ranked by `metric` (''
    = the preset's; a test_* metric is refused: choosing by it leaks the test set into the model
    the run registers). With `ray_address` (a Ray dashboard URL) the sweep is a Ray Job on that
    cluster, its trials in `storage` (s3://…); '' runs it in this step with a local Ray. Each
    trial gets trial_cpus / trial_gpus; max_concurrent trials at once (0: as Ray's resources
    allow). params: the input params with the best configuration applied; best: that
    configuration ({section.key: value}); summary: summary.md and the box plot; sweep:
    results.csv, summary.md, best.json, sweep.json, sweep.png. The sweep's MLflow run nests
    under this step's stage run. Fails when no trial completed."""
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    import pandas as pd
    import yaml

    from medssl.config import build_params
    from medssl.errors import MedsslError
    from medssl.orchestration import (
        evaluation_markdown,
        link_split_images,
        params_argument,
        pipeline_run_env,
        step_params,
    )
    from medssl.stages import tune as stage
    from medssl.tracking import stage_run
    from medssl.tuning import override_texts, refuse_test_metric

    cfg = step_params(params)
    settings = cfg.tune.with_preset(preset or None).model_dump()
    settings.update(
        address=ray_address or None,
        storage=storage or None,
        resources={"cpu": trial_cpus, "gpu": trial_gpus},
        max_concurrent=max_concurrent,
        metric=metric or settings["metric"],
    )
    tune_cfg = type(cfg.tune).model_validate(settings)
    refuse_test_metric(tune_cfg.metric, "the sweep pipeline registers the best configuration")
    name = f"{preset or 'sweep'}-{kfp_run_id[:12]}"
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    # the sweep folder (and a cluster job's --out) in a temp folder: the artifact holds only the
    # summary files, not the trials' folders and Ray's checkpoints
    work, out = Path(tempfile.mkdtemp()) / name, Path(sweep.path)
    with pipeline_run_env(parent_run_id), stage_run("tune", cfg, dataset) as tracker:
        if tune_cfg.address:
            params_file = Path(tempfile.mkdtemp()) / "params.yaml"
            params_file.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
            job = stage.submit_sweep(tune_cfg, dataset, work, params_file, preset or None, {}, name)
            print(job)
        else:
            print(stage.tune_sweep(dataset, work, cfg, tune_cfg, name=name).describe())
        out.mkdir(parents=True, exist_ok=True)
        for path in work.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)
        text = (out / stage.SUMMARY_FILE).read_text()
        if (out / stage.PLOT_FILE).is_file():
            text += f"\n![{name}]({stage.PLOT_FILE})\n"
        Path(summary.path).write_text(evaluation_markdown(text, out))
        results = pd.read_csv(out / stage.RESULTS_FILE)
        metrics.log_metric("trials", len(results))
        metrics.log_metric("trials_completed", int((results["status"] == "completed").sum()))
        info = stage.sweep_summary(out)
        best = info["best"]
        if not best:
            raise MedsslError(f"sweep {name}: no trial completed (see its results.csv)")
        metrics.log_metric(f"best_{best['metric']}", best["value"])
        tracker.log_metrics({f"best_{best['metric']}": best["value"]})
        tracker.log_params({f"best.{k}": v for k, v in best["params"].items()})
        if tracker.run_id and info.get("sweep_run_id"):
            tracker.client.set_tag(info["sweep_run_id"], "mlflow.parentRunId", tracker.run_id)
    tuned = build_params(params, override_texts(best["params"]))
    outputs = namedtuple("TuneOutputs", ["params", "best"])
    return outputs(params_argument(tuned), best["params"])
