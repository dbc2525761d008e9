"""data: the DVC-tracked dataset at `data_rev` (fetched from the data repo's remote) or, without
a data repo, the embedded synthetic archive."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data(config: dict, data_repo: str, data_rev: str, data_path: str, dataset: Output[Dataset]):
    """Write the dataset folder; its metadata holds the MLflow tags of the data revision."""
    from pathlib import Path

    from medssl.orchestration import prepare_data, resolve_params

    tags = prepare_data(Path(dataset.path), resolve_params(config), data_repo, data_rev, data_path)
    dataset.metadata.update(tags)
