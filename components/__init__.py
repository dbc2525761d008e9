"""Kubeflow Pipelines v2 components: one thin lightweight component per medssl stage, on the
project image (`components.image.IMAGE`), with typed artifacts between steps.

A body imports `medssl` inside (KFP ships only the function's source to the container) and calls
a stage function from `medssl.stages` plus the small helpers of `medssl.orchestration`.
Five pipelines use them: training (pipelines/training.py), the sweep (pipelines/sweep.py: `tune`
on the Ray cluster, then training with the best configuration), batch inference
(pipelines/batch_inference.py) and the label-fraction study (pipelines/label_fractions.py:
pretrain, then `study`) and paper 002's image-text chain (pipelines/image_text.py: pretrain
→ pairs → ConVIRT → organ task → train (GCE) → evaluate → register).
"""

from components.config import override_params, resolve_config
from components.data import data
from components.evaluate import evaluate
from components.image import DEFAULT_IMAGE, IMAGE
from components.pairs import organ_task, pairs
from components.predict import predict
from components.pretrain import pretrain
from components.register import register
from components.split import split
from components.study import study
from components.tracking import finish_run, start_run
from components.train import train
from components.tune import tune
from components.validate import validate

__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE",
    "data",
    "evaluate",
    "finish_run",
    "organ_task",
    "override_params",
    "pairs",
    "predict",
    "pretrain",
    "register",
    "resolve_config",
    "split",
    "start_run",
    "study",
    "train",
    "tune",
    "validate",
]
