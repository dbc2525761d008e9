"""validate: the data contract checks; a failed expectation fails the step (and the pipeline)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    dataset: Input[Dataset], config: dict, report: Output[HTML], results: Output[Artifact]
):
    """report: the verdict and every expectation (HTML); results: report.json and data docs."""
    from pathlib import Path

    from medssl.orchestration import check_validation, resolve_params, validation_html
    from medssl.stages import validate as stage

    cfg = resolve_params(config)
    result = stage.validate(Path(dataset.path), Path(results.path), cfg.validate_)
    print(stage.summary(result))
    Path(report.path).write_text(validation_html(result))
    results.metadata.update(success=result.success, failed=len(result.failures))
    check_validation(result)
