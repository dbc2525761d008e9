"""The methods' own hyperparameters: one typed params.yaml section per method, under its name.

They live here, not in the method modules, so that reading params.yaml (every command does) does
not import torch and torchvision (seconds per command); each method module imports its model from
here and names it in `Hyperparameters`, and a test checks that `SECTIONS` and
`medssl.methods.METHODS` agree.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medssl.config import Section


class SupervisedParams(Section):
    """`supervised:` in params.yaml: the fine-tuning loss (paper 000 eq. 9: BCE; paper 002 §4.3:
    the generalized cross-entropy of Zhang & Sabuncu 2018 for noisy labels)."""

    loss: Literal["bce", "gce"] = Field(
        "bce", description="bce (paper 000 eq. 9) | gce (paper 002 §4.3, noisy labels)"
    )
    q: float = Field(
        0.7,
        gt=0,
        le=1,
        description="GCE's q: → 0 gives cross-entropy, 1 gives MAE (Zhang & Sabuncu 2018 use 0.7)",
    )


class PicaParams(Section):
    """`pica:` in params.yaml (paper 000 §2.2.1, §3.3.1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    lambda_: float = Field(2.0, ge=0, alias="lambda", description="weight of the size term (λ)")
    clusters: int | None = Field(
        None, ge=2, description="K; null: the label combinations seen on val (§2.2.3)"
    )


class LsdParams(PicaParams):
    """`lsd:` in params.yaml (paper 000 §2.2.2): α = 1 + ε of the symmetric Dirichlet. The paper
    gives no ε; 1.1 is this project's default (a λ/α sweep is `medssl tune`'s job)."""

    alpha: float = Field(1.1, ge=1, description="Dirichlet concentration α = 1 + ε (>= 1)")


class DeepClusterParams(Section):
    """`deepcluster:` in params.yaml (paper 001 §3-4). The loop's knobs are `pretrain:`'s; the
    paper's are optimizer sgd, lr 0.05, momentum 0.9, weight_decay 1e-5, max_batch_images 256
    (the batch size), max_epochs 200, backbone vgg16_bn."""

    clusters: int | None = Field(
        None, ge=2, description="K; null: overcluster × the label combinations seen (§4)"
    )
    overcluster: int = Field(8, ge=1, description="K = overcluster × classes (paper: 8)")
    kmeans_iterations: int = Field(20, ge=1, description="Lloyd iterations per epoch")
    kmeans: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="auto: torch on a GPU, faiss-cpu on the CPU"
    )
    zscore: bool = Field(True, description="z-score every image on its own (§3)")
    augment_clustering: bool = Field(
        True, description="augment the images whose features are clustered too (§3)"
    )


class FixMatchParams(Section):
    """`fixmatch-onehead:` / `fixmatch-twohead:` in params.yaml (paper 000 §2.3, §3.2; FixMatch,
    Sohn et al. 2020). The loop's knobs are `train:`'s (paper 000: 5,000 steps, the best val
    epoch kept)."""

    mu: int = Field(
        4,
        ge=1,
        description="unlabeled exams per labeled exam in a batch: μ × train.batch_exams "
        "(paper 000 §3.2: 16 = 4 × 4), at most μ × train.max_batch_images images",
    )
    tau: float = Field(0.95, gt=0, le=1, description="confidence threshold τ of a pseudo-label")
    lambda_u: float = Field(1.0, ge=0, description="weight λ_u of the unlabeled loss (eq. 13)")
    ema: float = Field(
        0.0, ge=0, lt=1, description="decay of an EMA of the weights used for evaluation; 0: off"
    )
    strong_ops: int = Field(2, ge=0, description="RandAugment ops per strong view (N)")
    strong_magnitude: float = Field(
        1.0, ge=0, le=1, description="max RandAugment magnitude, drawn U(0, m) per image and op"
    )
    cutout: float = Field(0.5, ge=0, lt=1, description="cutout side of the strong view (share)")


class TwoHeadParams(FixMatchParams):
    """`fixmatch-twohead:` (paper 000 §2.3.2): a single-label head over K label combinations."""

    combinations: int | None = Field(
        None, ge=2, description="K; null: the label combinations of the labeled train rows"
    )


class LesionRecognitionParams(Section):
    """`lesion-recognition:` in params.yaml (paper 004 §2-3). The loop's knobs are `train:`'s
    (paper 004: resnet50, Adam lr 1e-4 ×0.1 every 50 epochs, 200 epochs, 256 px)."""

    variant: Literal["baseline", "lr", "ir", "lr-sc", "lr-dc", "lr-none"] = Field(
        "lr",
        description="baseline: L_cls only; lr: eq. 3 pairs; ir: instance recognition (eq. 5); "
        "lr-sc / lr-dc / lr-none: LR without the same-class / other-class / all negatives "
        "(Table 2)",
    )
    alpha: float = Field(1.0, ge=0, description="weight α of L_con (eq. 4; the paper gives none)")
    temperature: float = Field(
        1.0, gt=0, description="S(z_i, z_j) = cosine / temperature (eq. 2 has none: 1)"
    )
    group_by: Literal["patient", "lesion"] = Field(
        "patient", description="the P groups of a batch (paper 004 §3.1: patients)"
    )
    groups_per_batch: int = Field(8, ge=1, description="P groups per batch (paper: 8)")
    images_per_group: int = Field(8, ge=1, description="K images per group (paper: 8)")


class ConvirtParams(Section):
    """`convirt:` in params.yaml (paper 002 §4.1-4.2; ConVIRT, Zhang et al. 2020, whose defaults
    fill what paper 002 does not give: λ 0.75, τ 0.1, d 512). The loop's knobs are `pretrain:`'s;
    the text encoder is a small BERT from this config (random init) or a local weights folder
    (CamemBERT in production) whose embeddings are resized to the retrained tokenizer."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    lambda_: float = Field(
        0.75, ge=0, le=1, alias="lambda", description="weight λ of the image→text loss (§4.2)"
    )
    temperature: float = Field(0.1, gt=0, description="τ of the cosine similarities (§4.2)")
    projection_dim: int = Field(512, ge=2, description="d of the linear projections (Fig. 3)")
    max_length: int = Field(64, ge=8, le=512, description="tokens per description")
    text_hidden: int = Field(128, ge=8, description="BERT hidden size (config-built encoder)")
    text_layers: int = Field(2, ge=1, description="BERT layers (config-built encoder)")
    text_heads: int = Field(2, ge=1, description="BERT attention heads (config-built encoder)")
    text_weights: str | None = Field(
        None,
        description="local folder of pre-trained text-encoder weights (CamemBERT); null: "
        "a BERT built from the text_* keys, random init",
    )
    tokenizer: str | None = Field(
        None, description="WordPiece tokenizer folder; null: the dataset's tokenizer/ (pairs)"
    )


class SimclrParams(Section):
    """`simclr:` in params.yaml (paper 003 §III.C; SimCLR, Chen et al. 2020, whose choices fill
    what paper 003 does not give). The loop's knobs are `pretrain:`'s (paper 003: resnet50; a
    batch is pretrain.batch_exams exams, at most pretrain.max_batch_images images, two views
    each). τ 0.5 is SimCLR's for its smaller runs (CIFAR-10, App. B.9; its ImageNet runs with
    batches of 4096 use 0.1): our batches are tens to hundreds of images. The projection head g
    is SimCLR's W⁽²⁾σ(W⁽¹⁾h) with a 128-d output."""

    temperature: float = Field(
        0.5, gt=0, description="τ of NT-Xent (SimCLR eq. 1; SimCLR's small-batch value)"
    )
    projection_dim: int = Field(128, ge=2, description="output of the projection head g")
    input_norm: Literal["histogram", "image", "dataset"] = Field(
        "histogram",
        description="the encoder's input transform, kept by every model fine-tuned from it: "
        "histogram (§III.C: histogram normalisation) | image (z-score) | dataset (ImageNet)",
    )
    crop_min: float = Field(
        0.2, gt=0, le=1, description="smallest crop, share of the image area (§III.C: 0.2)"
    )
    blur_p: float = Field(
        0.5,
        ge=0,
        le=1,
        description="probability of the Gaussian blur (σ 0.1-2 px, 21 taps; §III.C's 'random' "
        "blur: SimCLR blurs half the views)",
    )
    noise_p: float = Field(
        1.0,
        ge=0,
        le=1,
        description="probability of the Gaussian noise (σ 12.5-25 % of the mean pixel value; "
        "§III.C: 'a random amount', always added)",
    )
    val_images: int = Field(
        256,
        ge=0,
        description="val images whose contrastive accuracy is measured each epoch (fixed views); "
        "0: none",
    )


class FasterRcnnParams(Section):
    """`faster-rcnn:` in params.yaml (paper 003 §III). The loop's knobs are `train:`'s; the
    paper's: backbone resnet50, sgd lr 0.0002 momentum 0.9 weight_decay 0.0001, batch_exams 2
    (one image per exam: 2 images per batch), max_epochs 12."""

    repeat_threshold: float | None = Field(
        0.4,
        gt=0,
        description="LVIS repeat-factor sampling's t (§III.A: 0.4); null: plain shuffling",
    )
    hflip: float = Field(
        0.5, ge=0, le=1, description="horizontal-flip probability (mmdetection's default)"
    )
    trainable_layers: int = Field(
        3,
        ge=0,
        le=5,
        description="ResNet stages fine-tuned from a pre-trained backbone, whose batch norms are "
        "frozen (torchvision's default 3); from random, everything trains",
    )
    frozen_batchnorm: bool = Field(
        True,
        description="freeze a pre-trained backbone's batch norms and train only its last "
        "trainable_layers stages (torchvision's recipe); false: fine-tune it all, batch norm "
        "included, as from random",
    )
    detections_per_image: int = Field(100, ge=1, description="kept per image (COCO's AR@100)")


SECTIONS: dict[str, type[BaseModel]] = {
    "supervised": SupervisedParams,
    "pica": PicaParams,
    "lsd": LsdParams,
    "deepcluster": DeepClusterParams,
    "fixmatch-onehead": FixMatchParams,
    "fixmatch-twohead": TwoHeadParams,
    "lesion-recognition": LesionRecognitionParams,
    "convirt": ConvirtParams,
    "simclr": SimclrParams,
    "faster-rcnn": FasterRcnnParams,
}
