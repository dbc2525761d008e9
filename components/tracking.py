"""The MLflow parent run of a pipeline run: opened after the data step, closed by the exit
handler (FINISHED, or FAILED when any step failed)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(dataset: Input[Dataset], params: dict, kfp_run_id: str) -> str:
    """Create the parent run (tags: KFP run id, data revision; params: the resolved config) and
    return its id; later steps nest their stage runs under it."""
    from medssl.orchestration import resolve_params, start_pipeline_run

    return start_pipeline_run(kfp_run_id, resolve_params(params), dict(dataset.metadata))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_run(kfp_run_id: str, params: dict, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: end the parent run FINISHED when every step succeeded, else FAILED."""
    from medssl.orchestration import experiment_name, finish_pipeline_run

    return finish_pipeline_run(kfp_run_id, experiment_name(params), status.state)
