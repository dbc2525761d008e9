"""The batch-inference pipeline on Kubeflow Pipelines v2: a registered model (the champion by
default) labels a dataset revision.

    resolve-config → data → predict (GPU) → predictions (Dataset) + summary (Markdown)

`model_uri` is a registry URI (`models:/abdominal-organs@champion`, `models:/…/3`) resolved when
the step runs, so a scheduled run always uses the current champion; the data step is the training
pipeline's (a DVC-tracked folder at `data_rev`, or the embedded synthetic archive). Compile with
`medssl pipeline compile` (every pipeline of this folder); run with `medssl pipeline run
--pipeline batch_inference --param model_uri=…`; schedule with `pipeline submit --pipeline
batch_inference --schedule …`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

import components as c  # noqa: E402
from kfp import dsl  # noqa: E402
from pipelines.training import DEFAULTS, SCALARS, compile_spec, step  # noqa: E402

from medssl.orchestration import SCALAR_PARAMS, params_argument  # noqa: E402

PIPELINE_NAME = "medssl-batch-inference"
DEFAULT_OUTPUT = ROOT / "pipelines" / "compiled" / "batch_inference.yaml"
DEFAULT_MODEL_URI = "models:/abdominal-organs@champion"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="medssl: a registered model (the champion) labels a dataset revision.",
)
def batch_inference(
    model_uri: str = DEFAULT_MODEL_URI,
    data_repo: str = "",
    data_rev: str = "",
    data_path: str = "data/abdominal-us",
    data_size: str = SCALARS["data_size"],
    data_seed: int = SCALARS["data_seed"],
    params: dict = params_argument(DEFAULTS),
):
    """model_uri: the registered version to use (an alias follows promotions); data_repo /
    data_rev / data_path: the DVC-tracked dataset (empty data_repo: the synthetic archive)."""
    # the training scalars keep their params.yaml values; only the data ones are parameters here
    scalars = {k: v for k, v in SCALARS.items() if k in SCALAR_PARAMS}
    scalars.update(data_size=data_size, data_seed=data_seed)
    config = c.resolve_config(params=params, **scalars)
    step(config, cpu="250m", memory="1Gi", cache=True, retry=False)

    data = c.data(
        config=config.outputs["data"], data_repo=data_repo, data_rev=data_rev, data_path=data_path
    )
    step(data, cpu="2", memory="8Gi", cache=True, retry=True)

    # not cached: the alias may point at another version by the next run; a retry starts afresh
    # and writes the same predictions (deterministic scoring)
    predict = c.predict(
        model_uri=model_uri, dataset=data.outputs["dataset"], params=config.outputs["params"]
    )
    step(predict, cpu="4", memory="16Gi", cache=False, retry=True, gpu=True)


PIPELINE = batch_inference


def compile_pipeline(out: Path = DEFAULT_OUTPUT) -> Path:
    """Write the pipeline spec (deterministic, like the training pipeline's)."""
    return compile_spec(batch_inference, out)


if __name__ == "__main__":
    print(compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
