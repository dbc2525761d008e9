"""train: one training loop for every method (the pipeline's GPU step)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    splits: Input[Dataset],
    images: Input[Dataset],
    params: dict,
    parent_run_id: str,
    model: Output[Model],
    encoder: Input[Model] = None,
):
    """Train on the split dataset (images from the data step's artifact); the model folder is the
    Model artifact. With `encoder` (the pretrain step's artifact) and train.init=checkpoint it
    starts from encoder.pt. The MLflow stage run nests under the pipeline's parent run."""
    import tempfile
    from pathlib import Path

    from medssl.orchestration import link_split_images, pipeline_run_env, step_params
    from medssl.stages import train as stage
    from medssl.tracking import stage_run

    cfg = step_params(params)
    if encoder is not None and cfg.train.init == "checkpoint":
        cfg.train.weights = str(Path(encoder.path) / "encoder.pt")
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    with pipeline_run_env(parent_run_id), stage_run("train", cfg, dataset) as tracker:
        result = stage.train(
            dataset,
            Path(model.path),
            cfg.train,
            progress=False,
            tracker=tracker,
            hparams=cfg.method_params(cfg.train.method),
        )
    print(result.describe())
    model.metadata.update(
        method=result.method,
        backbone=result.backbone,
        init=result.init,
        best_epoch=result.best_epoch,
        best_val_f1_weighted=result.best_val_f1_weighted,
        device=result.device,
    )
