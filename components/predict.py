"""predict: label a dataset with a registered model (batch inference)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def predict(
    model_uri: str,
    dataset: Input[Dataset],
    params: dict,
    predictions: Output[Dataset],
    summary: Output[Markdown],
):
    """predictions: the folder of `medssl predict` (predictions.parquet: per image and class the
    probability and the 0/1 decision; predict.json); summary: the model, the counts and the
    share of images each class was decided for (Markdown, shown in the KFP UI)."""
    from pathlib import Path

    from medssl.orchestration import predictions_markdown, step_params
    from medssl.stages import predict as stage

    cfg = step_params(params)
    out = Path(predictions.path)
    result = stage.predict(
        model_uri, Path(dataset.path), out, cfg.predict, ingest=cfg.ingest, progress=False
    )
    print(result.describe())
    predictions.metadata.update(
        images=result.images, images_per_s=result.images_per_s, **result.model
    )
    Path(summary.path).write_text(predictions_markdown(out))
