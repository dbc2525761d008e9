"""register: log and register the model in MLflow as `challenger`; the promotion gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    splits: Input[Dataset],
    images: Input[Dataset],
    params: dict,
    parent_run_id: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("decision", str), ("model_uri", str)]):
    """Register the model under register.model_name; promote it to `champion` when it beats
    the champion (scored on this run's test split) by register.margin on register.metric.
    Never cached: every run registers; a retry within the run returns the version and decision
    the first attempt made (the model's sha256 + the MLflow parent run)."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from medssl.orchestration import link_split_images, pipeline_run_env, step_params
    from medssl.stages import register as stage
    from medssl.tracking import stage_run

    cfg = step_params(params)
    # the champion is scored on this split's test images (in the data step's artifact)
    dataset = link_split_images(Path(splits.path), Path(images.path), Path(tempfile.mkdtemp()))
    with pipeline_run_env(parent_run_id), stage_run("register", cfg, dataset) as tracker:
        result = stage.register(
            Path(model.path), Path(evaluation.path), dataset, cfg.register_, tracker=tracker
        )
    print(result.describe())
    outputs = namedtuple("RegisterOutputs", ["version", "decision", "model_uri"])
    return outputs(result.version, result.decision.decision, result.model_uri)
