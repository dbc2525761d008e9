"""evaluate: per-class thresholds on val, test metrics (Metrics, ClassificationMetrics) and the
report (Markdown) for the KFP UI."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    params: dict,
    parent_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[Markdown],
    evaluation: Output[Artifact],
):
    """metrics: the test metrics (metrics.json names); classification: the micro-averaged test
    ROC curve and the confusion matrix summed over classes at the val-tuned thresholds; report:
    report.md (Table 2 layout, PR curves); evaluation: the report folder that `register`
    reads."""
    from pathlib import Path

    from medssl.orchestration import evaluation_markdown, pipeline_run_env, step_params
    from medssl.stages import evaluate as stage
    from medssl.tracking import stage_run

    cfg = step_params(params)
    out = Path(evaluation.path)
    with pipeline_run_env(parent_run_id), stage_run("evaluate", cfg, None) as tracker:
        result = stage.evaluate(Path(model.path), out, cfg.evaluate, tracker=tracker)
    print(stage.format_table(result))
    for name, value in stage.flat_metrics(result.metrics).items():
        metrics.log_metric(name, value)
    if result.roc["fpr"]:
        classification.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["threshold"])
    classification.log_confusion_matrix(["negative", "positive"], result.confusion)
    Path(report.path).write_text(evaluation_markdown(result.paths["report"].read_text(), out))
