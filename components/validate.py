"""validate: the data contract checks; a failed expectation fails the step (and the pipeline)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    dataset: Input[Dataset], config: dict, report: Output[Markdown], results: Output[Artifact]
):
    """report: the verdict and every expectation (Markdown, shown in the KFP UI); results:
    report.json and data docs."""
    from pathlib import Path

    from medssl.orchestration import check_validation, resolve_params, validation_markdown
    from medssl.stages import validate as stage

    cfg = resolve_params(config)
    result = stage.validate(Path(dataset.path), Path(results.path), cfg.validate_)
    print(stage.summary(result))
    Path(report.path).write_text(validation_markdown(result))
    results.metadata.update(success=result.success, failed=len(result.failures))
    check_validation(result)
