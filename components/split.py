"""split: patient-disjoint splits and the nested label-fraction subsets."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split(dataset: Input[Dataset], config: dict, splits: Output[Dataset]):
    """The split dataset (its images stay in the input artifact; nothing is copied)."""
    from pathlib import Path

    from medssl.orchestration import resolve_params
    from medssl.stages import split as stage

    result = stage.split(Path(dataset.path), Path(splits.path), resolve_params(config).split)
    splits.metadata.update({f"images_{name}": n for name, n in result.images.items()})
