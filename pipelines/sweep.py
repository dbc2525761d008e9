"""The sweep pipeline on Kubeflow Pipelines v2: a Ray Tune sweep on the KubeRay cluster picks the
configuration, then the training pipeline's steps run with it.

    resolve-config → data → validate → split → tune (Ray Job) → pretrain (GPU) → train (GPU)
                       └→ start-run (MLflow parent run) ┘            → evaluate → register
    exit handler: finish-run (parent run FINISHED, or FAILED when a step failed)

`tune` submits `medssl tune --preset <preset>` to the Ray cluster at `ray_address` (the
RayCluster's head service, infra/k8s/base/raycluster.yaml) as a Ray Job, waits for it, and
outputs the params with the best configuration (best.json) applied; pretrain, train, evaluate and
register run on those params. Training always starts from the pre-trained encoder
(train.init=checkpoint): the presets sweep the pretrain method's hyperparameters. An empty
`ray_address` runs the sweep inside the tune step with a local Ray (kfp.local; trial_gpus 0).

Compile with `medssl pipeline compile`; the result is committed as pipelines/compiled/sweep.yaml.
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

PIPELINE_NAME = "medssl-sweep"
DEFAULT_OUTPUT = ROOT / "pipelines" / "compiled" / "sweep.yaml"
# KubeRay's head service of RayCluster medssl-ray in namespace medssl: the Ray Jobs API
RAY_ADDRESS = "http://medssl-ray-head-svc.medssl.svc:8265"
DEFAULT_PRESET = "lambda-sensitivity"
DEFAULT_METRIC = "val_nmi"  # the preset ranks by a test metric, which the tune step refuses
# one trial per worker of the RayCluster's GPU group (7 CPUs, 1 GPU each, at most 4 workers)
TRIAL_CPUS, TRIAL_GPUS, MAX_CONCURRENT = 6.0, 1.0, 4


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="medssl: data → validate → split → tune (Ray Tune on the Ray cluster) → pretrain "
    "→ train → evaluate → register with the best configuration (MLflow-tracked).",
)
def sweep(
    ray_address: str = RAY_ADDRESS,
    storage: str = "",
    preset: str = DEFAULT_PRESET,
    metric: str = DEFAULT_METRIC,
    trial_cpus: float = TRIAL_CPUS,
    trial_gpus: float = TRIAL_GPUS,
    max_concurrent: int = MAX_CONCURRENT,
    data_repo: str = "",
    data_rev: str = "",
    data_path: str = "data/abdominal-us",
    data_size: str = SCALARS["data_size"],
    data_seed: int = SCALARS["data_seed"],
    pretrain_method: str = SCALARS["pretrain_method"],
    pretrain_max_epochs: int = SCALARS["pretrain_max_epochs"],
    pretrain_max_steps: int = SCALARS["pretrain_max_steps"],
    train_lr: float = SCALARS["train_lr"],
    train_max_epochs: int = SCALARS["train_max_epochs"],
    train_max_steps: int = SCALARS["train_max_steps"],
    train_backbone: str = SCALARS["train_backbone"],
    train_label_fraction: float = SCALARS["train_label_fraction"],
    train_seed: int = SCALARS["train_seed"],
    register_margin: float = SCALARS["register_margin"],
    register_model_name: str = SCALARS["register_model_name"],
    params: dict = params_argument(DEFAULTS),
):
    """ray_address: the Ray dashboard the sweep is submitted to ('' = inside the tune step);
    storage: the trials' shared storage, s3://bucket/prefix (needed on a cluster); preset: one
    of params.yaml's tune.presets ('' = its tune section); metric: what ranks the
    configurations ('' = the preset's; not a test_ metric). The other parameters are the
    training pipeline's."""
    scalars = {name: value for name, value in locals().items() if name in SCALAR_PARAMS}
    scalars["train_init"] = "checkpoint"
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    finish = c.finish_run(kfp_run_id=run_id, params=params)
    step(finish, cpu="250m", memory="1Gi", cache=False, retry=True)

    with dsl.ExitHandler(finish, name="steps"):
        resolved, dataset, splits, parent = data_steps(
            params, scalars, data_repo, data_rev, data_path, run_id
        )
        tune = c.tune(
            splits=splits,
            images=dataset,
            params=resolved,
            parent_run_id=parent,
            kfp_run_id=run_id,
            preset=preset,
            metric=metric,
            ray_address=ray_address,
            storage=storage,
            trial_cpus=trial_cpus,
            trial_gpus=trial_gpus,
            max_concurrent=max_concurrent,
        )
        # a CPU pod that waits for the Ray Job; not retried: a retry would submit the whole
        # sweep again (its name is the run's, so the job would refuse the existing sweep)
        step(tune, cpu="1", memory="4Gi", cache=False, retry=False)
        tuned = tune.outputs["params"]

        pretrain = c.pretrain(splits=splits, images=dataset, params=tuned, parent_run_id=parent)
        step(pretrain, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)
        train = c.train(
            splits=splits,
            images=dataset,
            params=tuned,
            parent_run_id=parent,
            encoder=pretrain.outputs["encoder"],
        )
        evaluate_and_register(train, splits, dataset, tuned, parent)


PIPELINE = sweep


def compile_pipeline(out: Path = DEFAULT_OUTPUT) -> Path:
    """Write the pipeline spec (deterministic, like the training pipeline's)."""
    return compile_spec(sweep, out)


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
