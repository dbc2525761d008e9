"""The label-fraction study pipeline on Kubeflow Pipelines v2: paper 000's Fig. 6 study
(`medssl study label-fractions`) on a dataset revision, from the encoder pre-trained in the run.

    resolve-config → data → validate → split → pretrain (GPU) → study (GPU, local Ray)
                       └→ start-run (MLflow parent run) ┘
    exit handler: finish-run (parent run FINISHED, or FAILED when a step failed)

`pretrain` is the training pipeline's step (the deep-clustering encoder, `pretrain.method`);
`study` runs the tune preset `label-fractions` (strategies supervised / FixMatch One-Head /
Two-Head, from random weights or that encoder × label fractions × `seeds`, each cell train →
evaluate) as one Ray Tune sweep, and writes study.md, study.json and fig6.png (mean test F1 and
95 % CI per strategy × fraction, the paper's paired effects).

The cells run inside the study step's pod with a local Ray: each cell gets `trial_cpus` /
`trial_gpus` (1 on the cluster: one GPU per cell), so as many cells run at once as the pod's GPUs
(STUDY_GPUS) allow, or `max_concurrent`. Submitting the cells to the KubeRay cluster as a Ray Job
(as the sweep pipeline's tune step does) would need the encoder uploaded next to the dataset
(`<storage>/<sweep>/dataset/`) so the Ray pods can read it: that is not done. With kfp.local
(`medssl pipeline run --pipeline label_fractions`) set trial_gpus 0 and trial_cpus to at most the
machine's cores.

Parameters: the data ones and the pretrain scalars as in the training pipeline, the train scalars
the preset leaves to params.yaml (train_max_epochs, train_backbone, train_seed; the preset sets
method, init, label fraction, step budget and lr per cell), and the study's seeds, trial_cpus,
trial_gpus, max_concurrent. Compile with `medssl pipeline compile`; the result is committed as
pipelines/compiled/label_fractions.yaml.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

import components as c  # noqa: E402
from kfp import dsl  # noqa: E402
from pipelines.training import DEFAULTS, SCALARS, compile_spec, data_steps, step  # noqa: E402

from medssl.orchestration import SCALAR_PARAMS, params_argument  # noqa: E402

PIPELINE_NAME = "medssl-label-fractions"
DEFAULT_OUTPUT = ROOT / "pipelines" / "compiled" / "label_fractions.yaml"
PRESET = "label-fractions"  # medssl.stages.study.PRESET (not imported: it pulls in pandas)
DEFAULT_SEEDS = DEFAULTS.tune.with_preset(PRESET).seeds
# the study pod: STUDY_GPUS GPUs of the GPU pool, one per cell; max_concurrent 0 = as they allow
STUDY_GPUS = 1
TRIAL_CPUS, TRIAL_GPUS, MAX_CONCURRENT = 4.0, 1.0, 0
# the scalar pipeline parameters of this pipeline; the others keep their params.yaml values
PARAMETERS = (
    "data_size", "data_seed", "pretrain_method", "pretrain_max_epochs", "pretrain_max_steps",
    "train_max_epochs", "train_backbone", "train_seed",
)  # fmt: skip


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="medssl: data → validate → split → pretrain → the label-fraction study (paper "
    "000 Fig. 6: supervised / FixMatch from random or the encoder × label fractions × seeds; "
    "MLflow-tracked).",
)
def label_fractions(
    seeds: int = DEFAULT_SEEDS,
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
    train_max_epochs: int = SCALARS["train_max_epochs"],
    train_backbone: str = SCALARS["train_backbone"],
    train_seed: int = SCALARS["train_seed"],
    params: dict = params_argument(DEFAULTS),
):
    """seeds: seeds per cell (the preset's by default); trial_cpus / trial_gpus: each cell's
    share of the study pod (trial_gpus 0 with kfp.local); max_concurrent: cells at once (0: as
    the pod's resources allow). The other parameters are the training pipeline's."""
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
        # the training pipeline's pretrain step; no retry: a retried pod has lost its checkpoints
        pretrain = c.pretrain(splits=splits, images=dataset, params=resolved, parent_run_id=parent)
        step(pretrain, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)
        study = c.study(
            splits=splits,
            images=dataset,
            encoder=pretrain.outputs["encoder"],
            params=resolved,
            parent_run_id=parent,
            kfp_run_id=run_id,
            seeds=seeds,
            trial_cpus=trial_cpus,
            trial_gpus=trial_gpus,
            max_concurrent=max_concurrent,
        )
        # the Ray GPU worker's size (fits a g2-standard-8 GPU node); not retried either: a retry
        # starts every cell again on a fresh disk
        step(study, cpu="6", memory="24Gi", cache=False, retry=False, gpu=True)
        study.set_accelerator_limit(STUDY_GPUS)


PIPELINE = label_fractions


def compile_pipeline(out: Path = DEFAULT_OUTPUT) -> Path:
    """Write the pipeline spec (deterministic, like the training pipeline's)."""
    return compile_spec(label_fractions, out)


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
