"""Paper 002's image-text chain on Kubeflow Pipelines v2:

    resolve-config → data → validate → split → pretrain (deep clustering, GPU) → pairs
      → pretrain with convirt_overrides (ConVIRT on the pairs, GPU)
    split → organ-task → train with kidney_overrides (GCE, from the ConVIRT encoder, GPU)
      → evaluate → register (its own registered model: kidney-abnormal)
    exit handler: finish-run (the MLflow parent run)

The steps are the training pipeline's components plus `pairs`, `organ_task` and
`override_params` (one resolved config, with the method switched per step: pretrain.method is the
clustering method, then convirt; the fine-tuning takes supervised.loss=gce). Parameters: the data
ones, the pretrain / train budgets, and the two override lists. Compile with
`medssl pipeline compile`; the result is committed as pipelines/compiled/image_text.yaml.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

import components as c  # noqa: E402
from kfp import dsl  # noqa: E402
from pipelines.training import (  # noqa: E402
    DEFAULTS,
    SCALARS,
    compile_spec,
    data_steps,
    evaluate_and_register,
    step,
)

from medssl.orchestration import SCALAR_PARAMS, params_argument  # noqa: E402

PIPELINE_NAME = "medssl-image-text"
DEFAULT_OUTPUT = ROOT / "pipelines" / "compiled" / "image_text.yaml"
CONVIRT_OVERRIDES = ["pretrain.method=convirt"]
KIDNEY_OVERRIDES = [
    "train.method=supervised",
    "train.init=checkpoint",
    "supervised.loss=gce",
    "register.model_name=kidney-abnormal",
]
PARAMETERS = (
    "data_size", "data_seed", "pretrain_max_epochs", "pretrain_max_steps", "train_max_epochs",
    "train_max_steps", "train_seed",
)  # fmt: skip


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="medssl, paper 002: data → validate → split → deep clustering → kidney "
    "image-text pairs → ConVIRT → normal/abnormal kidney fine-tuning (GCE) → evaluate → "
    "register (MLflow-tracked).",
)
def image_text(
    data_repo: str = "",
    data_rev: str = "",
    data_path: str = "data/abdominal-us",
    data_size: str = SCALARS["data_size"],
    data_seed: int = SCALARS["data_seed"],
    pretrain_max_epochs: int = SCALARS["pretrain_max_epochs"],
    pretrain_max_steps: int = SCALARS["pretrain_max_steps"],
    train_max_epochs: int = SCALARS["train_max_epochs"],
    train_max_steps: int = SCALARS["train_max_steps"],
    train_seed: int = SCALARS["train_seed"],
    convirt_overrides: list = CONVIRT_OVERRIDES,
    kidney_overrides: list = KIDNEY_OVERRIDES,
    params: dict = params_argument(DEFAULTS),
):
    """convirt_overrides: what the ConVIRT step changes in the config (pretrain.method=convirt,
    convirt.*); kidney_overrides: the fine-tuning's (GCE, init from the ConVIRT encoder, the
    registered model's name). The other parameters are the training pipeline's."""
    scalars = {k: v for k, v in SCALARS.items() if k in SCALAR_PARAMS}
    given = locals()
    scalars.update({name: given[name] for name in PARAMETERS})
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    finish = c.finish_run(kfp_run_id=run_id, params=params)
    step(finish, cpu="250m", memory="1Gi", cache=False, retry=True)

    with dsl.ExitHandler(finish, name="steps"):
        resolved, dataset, splits, parent = data_steps(
            params, scalars, data_repo, data_rev, data_path, run_id
        )
        # §3.2: the deep clusters select the kidney images (no retry: checkpoints are lost)
        clusters = c.pretrain(splits=splits, images=dataset, params=resolved, parent_run_id=parent)
        step(clusters, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)
        pairs = c.pairs(
            splits=splits, images=dataset, encoder=clusters.outputs["encoder"], params=resolved
        )
        step(pairs, cpu="2", memory="8Gi", cache=False, retry=True)

        convirt_params = c.override_params(params=resolved, overrides=convirt_overrides)
        step(convirt_params, cpu="250m", memory="1Gi", cache=True, retry=False)
        convirt = c.pretrain(
            splits=pairs.outputs["image_text"],
            images=dataset,
            params=convirt_params.output,
            parent_run_id=parent,
        )
        step(convirt, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)

        kidney_params = c.override_params(params=resolved, overrides=kidney_overrides)
        step(kidney_params, cpu="250m", memory="1Gi", cache=True, retry=False)
        task = c.organ_task(splits=splits, images=dataset, params=resolved)
        step(task, cpu="1", memory="4Gi", cache=True, retry=False)
        train = c.train(
            splits=task.outputs["task"],
            images=dataset,
            params=kidney_params.output,
            parent_run_id=parent,
            encoder=convirt.outputs["encoder"],
        )
        evaluate_and_register(train, task.outputs["task"], dataset, kidney_params.output, parent)


PIPELINE = image_text


def compile_pipeline(out: Path = DEFAULT_OUTPUT) -> Path:
    """Write the pipeline spec (deterministic, like the training pipeline's)."""
    return compile_spec(image_text, out)


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
