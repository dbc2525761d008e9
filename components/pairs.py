"""pairs / organ-task: paper 002's image-text pairs and the organ's labeled binary task."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pairs(
    splits: Input[Dataset],
    images: Input[Dataset],
    encoder: Input[Model],
    params: dict,
    image_text: Output[Dataset],
):
    """The organ's image-text dataset (§3): its deep clusters (the pretrain step's artifact) ×
    its report sentences; images stay in the data step's artifact."""
    import tempfile
    from pathlib import Path

    from medssl.orchestration import link_split_images, step_params
    from medssl.stages import pairs as stage

    cfg = step_params(params)
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    result = stage.make_pairs(dataset, Path(encoder.path), Path(image_text.path), cfg.pairs)
    print(result.describe())
    image_text.metadata.update(
        organ=result.organ, clusters=result.clusters, pairs=result.flow["pairs"]["images"]
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def organ_task(splits: Input[Dataset], images: Input[Dataset], params: dict, task: Output[Dataset]):
    """The organ's labeled images as a binary dataset (§4.3: normal/abnormal kidney)."""
    import tempfile
    from pathlib import Path

    from medssl.orchestration import link_split_images, step_params
    from medssl.stages import pairs as stage

    cfg = step_params(params)
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    result = stage.organ_task(dataset, Path(task.path), cfg.pairs)
    print(result.describe())
    task.metadata.update({f"images_{s}": c["images"] for s, c in result.counts.items()})
