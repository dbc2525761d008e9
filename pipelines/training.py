"""The training pipeline on Kubeflow Pipelines v2:

    resolve-config → data → validate → split → pretrain (GPU) → train (GPU) → evaluate → register
                       └→ start-run (MLflow parent run) ┘
    exit handler: finish-run (parent run FINISHED, or FAILED when a step failed)

train_init decides the branch: `checkpoint` (params.yaml's default) pre-trains the encoder
(`pretrain.method`, paper 000 §2.2) and fine-tunes from it; `random` is the from-scratch
baseline without the pretrain step (any other init also skips it).

Parameter defaults are the repository's params.yaml at compile time (`params`: the whole resolved
file; the scalar parameters: the keys a run usually overrides, which win over `params`).
Compile with `medssl pipeline compile` (or `python pipelines/training.py`); the result is
committed as pipelines/compiled/training.yaml.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

import components as c  # noqa: E402
from kfp import dsl, kubernetes  # noqa: E402
from kfp.dsl.pipeline_channel import PipelineChannel  # noqa: E402

from medssl.config import load_params  # noqa: E402
from medssl.orchestration import SCALAR_PARAMS, params_argument, scalar_defaults  # noqa: E402

PIPELINE_NAME = "medssl-training"
DEFAULT_OUTPUT = ROOT / "pipelines" / "compiled" / "training.yaml"
DEFAULTS = load_params(ROOT / "params.yaml")
SCALARS = scalar_defaults(DEFAULTS)

# Kubernetes settings (infra/ creates the secret and the GPU node pool)
SECRET = "medssl-credentials"
SECRET_KEYS = [
    "MLFLOW_TRACKING_URI",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
]
# on-prem MinIO endpoints; GCS through its S3 API needs boto3's checksums off (gke overlay)
SECRET_KEYS_OPTIONAL = [
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
]
GPU_POOL_LABEL = ("medssl.io/pool", "gpu")
GPU_RESOURCE = "nvidia.com/gpu"
# Retries for what can fail transiently (network, MLflow server, node preemption); a failing
# config, validation or split is a verdict about the inputs and is not retried.
RETRY = {"num_retries": 2, "backoff_duration": "30s", "backoff_factor": 2.0,
         "backoff_max_duration": "300s"}  # fmt: skip


def step(
    task: dsl.PipelineTask,
    *,
    cpu: str,
    memory: str,
    cache: bool,
    retry: bool,
    gpu: bool = False,
) -> dsl.PipelineTask:
    """Resources, credentials, caching and retries of one step."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.use_secret_as_env(task, SECRET, {k: k for k in SECRET_KEYS})
    kubernetes.use_secret_as_env(task, SECRET, {k: k for k in SECRET_KEYS_OPTIONAL}, optional=True)
    task.set_caching_options(cache)
    if retry:
        task.set_retry(**RETRY)
    if gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
        kubernetes.add_node_selector(task, *GPU_POOL_LABEL)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def evaluate_and_register(
    train: dsl.PipelineTask,
    splits: PipelineChannel,
    dataset: PipelineChannel,
    params: PipelineChannel,
    parent: PipelineChannel,
) -> None:
    """train (GPU) → evaluate → register, in either branch (kfp.local cannot merge branches
    with dsl.OneOf, so each branch holds its own tail)."""
    # No retry: a retried pod starts on a fresh disk without the checkpoints, so it would
    # train again from scratch (GPU hours, and another model for the same run); a failed
    # train fails the run, and re-running it reuses the cached data steps (docs/kubeflow.md).
    step(train, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)

    evaluate = c.evaluate(model=train.outputs["model"], params=params, parent_run_id=parent)
    step(evaluate, cpu="1", memory="4Gi", cache=False, retry=True)

    register = c.register(
        model=train.outputs["model"],
        evaluation=evaluate.outputs["evaluation"],
        splits=splits,
        images=dataset,
        params=params,
        parent_run_id=parent,
    )
    # a retried register finds the version it already made (idempotent on the parent run)
    step(register, cpu="1", memory="4Gi", cache=False, retry=True)


def data_steps(
    params: PipelineChannel,
    scalars: dict[str, PipelineChannel | str],
    data_repo: PipelineChannel,
    data_rev: PipelineChannel,
    data_path: PipelineChannel,
    run_id: str,
) -> tuple[PipelineChannel, PipelineChannel, PipelineChannel, PipelineChannel]:
    """resolve-config → data → validate → split, and start-run (the MLflow parent run): what
    every training-like pipeline starts with; (resolved params, dataset, split dataset, parent
    run id)."""
    config = c.resolve_config(params=params, **scalars)
    step(config, cpu="250m", memory="1Gi", cache=True, retry=False)
    resolved = config.outputs["params"]
    data = c.data(
        config=config.outputs["data"], data_repo=data_repo, data_rev=data_rev, data_path=data_path
    )
    # cached on (data_repo, data_rev, data_path, data.*): pass a commit sha, not a branch
    step(data, cpu="2", memory="8Gi", cache=True, retry=True)
    dataset = data.outputs["dataset"]
    validate = c.validate(dataset=dataset, config=config.outputs["validate"])
    step(validate, cpu="2", memory="8Gi", cache=True, retry=False)
    split = c.split(dataset=dataset, config=config.outputs["split"]).after(validate)
    step(split, cpu="1", memory="4Gi", cache=True, retry=False)
    # The tracked steps take the run's MLflow parent id, so they never hit the cache (a cached
    # stage would leave this run's parent without its stage run): caching off, explicitly.
    start = c.start_run(dataset=dataset, params=resolved, kfp_run_id=run_id)
    step(start, cpu="250m", memory="1Gi", cache=False, retry=True)
    return resolved, dataset, split.outputs["splits"], start.output


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="medssl: data → validate → split → pretrain → train → evaluate → register "
    "(MLflow-tracked).",
)
def training(
    data_repo: str = "",
    data_rev: str = "",
    data_path: str = "data/abdominal-us",
    data_size: str = SCALARS["data_size"],
    data_seed: int = SCALARS["data_seed"],
    pretrain_method: str = SCALARS["pretrain_method"],
    pretrain_max_epochs: int = SCALARS["pretrain_max_epochs"],
    pretrain_max_steps: int = SCALARS["pretrain_max_steps"],
    train_init: str = SCALARS["train_init"],
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
    """data_repo/data_rev/data_path: the DVC-tracked dataset (git URL, commit, folder); an empty
    data_repo synthesizes the embedded archive (data.size, data.seed). train_max_steps 0: no step
    budget; register_model_name '': abdominal-organs."""
    scalars = {name: value for name, value in locals().items() if name in SCALAR_PARAMS}
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    finish = c.finish_run(kfp_run_id=run_id, params=params)
    step(finish, cpu="250m", memory="1Gi", cache=False, retry=True)

    with dsl.ExitHandler(finish, name="steps"):
        resolved, dataset, splits, parent = data_steps(
            params, scalars, data_repo, data_rev, data_path, run_id
        )
        with dsl.If(train_init == "checkpoint", name="from-encoder"):
            pretrain = c.pretrain(
                splits=splits, images=dataset, params=resolved, parent_run_id=parent
            )
            # no retry, like train: a retried pod has lost its checkpoints
            step(pretrain, cpu="4", memory="16Gi", cache=False, retry=False, gpu=True)
            fine_tune = c.train(
                splits=splits,
                images=dataset,
                params=resolved,
                parent_run_id=parent,
                encoder=pretrain.outputs["encoder"],
            )
            evaluate_and_register(fine_tune, splits, dataset, resolved, parent)
        with dsl.Else(name="from-scratch"):
            scratch = c.train(splits=splits, images=dataset, params=resolved, parent_run_id=parent)
            evaluate_and_register(scratch, splits, dataset, resolved, parent)


PIPELINE = training


def compile_pipeline(out: Path = DEFAULT_OUTPUT) -> Path:
    """Write the pipeline spec (deterministic: same code, params.yaml and image → same bytes)."""
    return compile_spec(training, out)


def compile_spec(pipeline: object, out: Path) -> Path:
    """Compile `pipeline` to `out` with a stable header (shared by every pipeline module)."""
    import tempfile

    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(raw))
        text = _stable_header(raw.read_text())
    out.write_text(text)
    return out


def _stable_header(text: str) -> str:
    """kfp's comment header prints a dict default in protobuf map order, which changes from one
    process to the next; print it with sorted keys instead (the spec itself is sorted)."""
    import json
    import re

    import yaml

    spec = next(yaml.safe_load_all(text))
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = re.match(r"^#(\s+)(\w+): dict \[Default: .*\]$", line)
        if match:
            default = inputs[match.group(2)]["defaultValue"]
            shown = json.dumps(default, sort_keys=True)
            lines[i] = f"#{match.group(1)}{match.group(2)}: dict [Default: {shown}]"
    return "\n".join(lines)


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
