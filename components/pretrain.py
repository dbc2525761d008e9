"""pretrain: an encoder method (deep clustering) on the unlabeled rows (a GPU step)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    splits: Input[Dataset],
    images: Input[Dataset],
    params: dict,
    parent_run_id: str,
    encoder: Output[Model],
):
    """Pre-train `pretrain.method` on the split dataset; the encoder folder (encoder.pt, cluster
    assignments, Algorithm-1 table) is the Model artifact that `train` starts from."""
    import tempfile
    from pathlib import Path

    from medssl.orchestration import link_split_images, pipeline_run_env, step_params
    from medssl.stages import pretrain as stage
    from medssl.tracking import stage_run

    cfg = step_params(params)
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    with pipeline_run_env(parent_run_id), stage_run("pretrain", cfg, dataset) as tracker:
        result = stage.pretrain(
            dataset,
            Path(encoder.path),
            cfg.pretrain,
            hparams=cfg.method_params(cfg.pretrain.method),
            progress=False,
            tracker=tracker,
            evaluate_cfg=cfg.evaluate,
        )
    print(result.describe())
    metrics = result.metrics
    encoder.metadata.update(
        method=result.method,
        backbone=result.backbone,
        steps=result.steps,
        device=result.device,
        clusters=metrics.get("clusters"),
        test_f1_weighted=metrics.get("test_f1_weighted"),
        test_nmi=metrics.get("test_nmi"),
    )
