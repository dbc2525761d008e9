"""study: paper 000's label-fraction study (`medssl study label-fractions`, Fig. 6) on the split
dataset, every cell that starts from an encoder reading the pretrain step's."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def study(
    splits: Input[Dataset],
    images: Input[Dataset],
    encoder: Input[Model],
    params: dict,
    parent_run_id: str,
    kfp_run_id: str,
    seeds: int,
    trial_cpus: float,
    trial_gpus: float,
    max_concurrent: int,
    summary: Output[Markdown],
    metrics: Output[Metrics],
    study: Output[Artifact],
):
    """The tune preset `label-fractions` (strategies 1-4 × label fractions × `seeds`) as one Ray
    Tune sweep inside this step with a local Ray: each cell gets trial_cpus / trial_gpus,
    max_concurrent cells at once (0: as the pod's resources allow); strategies 2 and 4 start from
    the encoder artifact's encoder.pt. summary: study.md with fig6.png; metrics: the mean test
    weighted F1 per strategy × fraction (`f1_<strategy>_<percent>pct`); study: study.md,
    study.json, fig6.png and the sweep's summary files under sweep/ (results.csv, summary.md …;
    not the cells' folders). The sweep's MLflow run nests under this step's stage run. Fails when
    no cell completed."""
    import re
    import shutil
    import tempfile
    from pathlib import Path

    from medssl.orchestration import (
        evaluation_markdown,
        link_split_images,
        pipeline_run_env,
        step_params,
    )
    from medssl.stages import study as stage
    from medssl.stages.pretrain import ENCODER_FILE
    from medssl.tracking import stage_run

    cfg = step_params(params)
    updates = {
        "address": None,  # local Ray in this pod, whatever params.yaml's tune.address says
        "storage": None,  # the cells' Ray storage: the work folder below
        "seeds": seeds,
        "max_concurrent": max_concurrent,
        "resources": {"cpu": trial_cpus, "gpu": trial_gpus},
    }
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    # the study folder in a temp folder, removed at the end: the artifact holds only the report
    # and the sweep's summary files, not the cells' model folders and Ray's checkpoints
    tmp = tempfile.TemporaryDirectory(prefix="medssl-study-", ignore_cleanup_errors=True)
    work = Path(tmp.name) / f"{stage.PRESET}-{kfp_run_id[:12]}"
    out = Path(study.path)
    with tmp, pipeline_run_env(parent_run_id), stage_run("study", cfg, dataset) as tracker:
        result = stage.label_fraction_study(
            dataset,
            work,
            cfg,
            encoder=Path(encoder.path) / ENCODER_FILE,
            updates=updates,
            progress=False,
        )
        print(result.describe())
        for source, target in ((work, out), (work / stage.SWEEP_DIR, out / stage.SWEEP_DIR)):
            target.mkdir(parents=True, exist_ok=True)
            for path in source.iterdir():
                if path.is_file():
                    shutil.copy2(path, target / path.name)
        text = (out / stage.REPORT_FILE).read_text()
        if (out / stage.PLOT_FILE).is_file():
            text += f"\n![Fig. 6]({stage.PLOT_FILE})\n"
        Path(summary.path).write_text(evaluation_markdown(text, out))
        values = {}
        for row in result.table.to_dict(orient="records"):
            slug = re.sub(r"[^a-z0-9]+", "_", str(row["strategy"]).lower()).strip("_")
            percent = f"{100 * float(row['label_fraction']):g}".replace(".", "p")
            values[f"f1_{slug}_{percent}pct"] = float(row["f1_weighted"])
        for name, value in values.items():
            metrics.log_metric(name, value)
        metrics.log_metric("cells", len(result.table))
        tracker.log_metrics(values)
        if tracker.run_id and result.sweep_run_id:
            tracker.client.set_tag(result.sweep_run_id, "mlflow.parentRunId", tracker.run_id)
