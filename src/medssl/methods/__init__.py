"""Training methods. A method is one module here plus one entry in `METHODS`, which maps the
params.yaml name (`train.method`, `pretrain.method`) to its class; the engine, stages and
pipelines do not change. Its `product` decides the stage: encoder → pretrain, classifier or
detector → train."""

from __future__ import annotations

from medssl.engine.method import Method, StepOutput
from medssl.errors import ConfigError
from medssl.methods.base import EncoderMethod, MultilabelMethod
from medssl.methods.convirt import Convirt
from medssl.methods.deepcluster import DeepCluster
from medssl.methods.faster_rcnn import FasterRcnn
from medssl.methods.fixmatch import FixMatchOneHead, FixMatchTwoHead
from medssl.methods.lesion import LesionRecognition
from medssl.methods.pica import Lsd, Pica
from medssl.methods.simclr import Simclr
from medssl.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    Supervised.name: Supervised,
    Pica.name: Pica,
    Lsd.name: Lsd,
    DeepCluster.name: DeepCluster,
    FixMatchOneHead.name: FixMatchOneHead,
    FixMatchTwoHead.name: FixMatchTwoHead,
    LesionRecognition.name: LesionRecognition,
    Convirt.name: Convirt,
    Simclr.name: Simclr,
    FasterRcnn.name: FasterRcnn,
}


def get_method(
    name: str, product: str | tuple[str, ...] = "classifier", stage: str = "train"
) -> type[Method]:
    """The method class of `<stage>.method` = name, which must make `product` (or one of)."""
    products = (product,) if isinstance(product, str) else product
    cls = METHODS.get(name)
    if cls is None or cls.product not in products:
        known = ", ".join(sorted(n for n, c in METHODS.items() if c.product in products))
        if cls is None:
            raise ConfigError(f"unknown {stage}.method {name!r} (known: {known})")
        other = "pretrain" if cls.product == "encoder" else "train"
        wanted = " or ".join(_a(p) for p in products)
        raise ConfigError(
            f"{stage}.method {name!r} is not {wanted} method (known: {known}); "
            f"{name!r} makes {_a(cls.product)}: run it with `medssl {other}`"
        )
    return cls


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


__all__ = [
    "METHODS",
    "Convirt",
    "DeepCluster",
    "EncoderMethod",
    "FasterRcnn",
    "FixMatchOneHead",
    "FixMatchTwoHead",
    "LesionRecognition",
    "Lsd",
    "Method",
    "MultilabelMethod",
    "Pica",
    "Simclr",
    "StepOutput",
    "Supervised",
    "get_method",
]
