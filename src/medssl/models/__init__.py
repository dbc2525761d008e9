"""Backbones (torchvision), the exported classifier and the model.pt format."""

from medssl.models.backbones import BACKBONES, build_backbone
from medssl.models.classifier import (
    Classifier,
    ClusterClassifier,
    Normalize,
    build_classifier,
    load_model,
    save_model,
)

__all__ = [
    "BACKBONES",
    "Classifier",
    "ClusterClassifier",
    "Normalize",
    "build_backbone",
    "build_classifier",
    "load_model",
    "save_model",
]
