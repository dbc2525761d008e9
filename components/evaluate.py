"""evaluate: per-class thresholds on val, test metrics (Metrics) and the report (HTML)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    params: dict,
    parent_run_id: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
):
    """metrics: the test metrics; report: report.md as HTML; evaluation: the report folder
    (metrics.json, thresholds, PR curves) that `register` reads."""
    from pathlib import Path

    from medssl.orchestration import markdown_html, pipeline_run_env, step_params
    from medssl.stages import evaluate as stage
    from medssl.tracking import stage_run

    cfg = step_params(params)
    out = Path(evaluation.path)
    with pipeline_run_env(parent_run_id), stage_run("evaluate", cfg, None) as tracker:
        result = stage.evaluate(Path(model.path), out, cfg.evaluate, tracker=tracker)
    print(stage.format_table(result))
    for name, value in stage.tracker_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    report_md = result.paths["report"].read_text()
    Path(report.path).write_text(markdown_html(report_md, out, title="Evaluation"))
