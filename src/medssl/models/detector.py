"""The detector of paper 003 (§III.B): torchvision's Faster R-CNN with a feature pyramid over a
medssl ResNet, for grey images at the dataset's size, built without a download.

Layout: `normalize` (the input normalisation a classifier uses: the same module, so an encoder's
`input_norm` comes with its backbone) → Faster R-CNN whose transform neither resizes (min/max
size = the image size) nor normalises again (mean 0, std 1). The ResNet sits at
`backbone.body.*`: an encoder.pt's or classifier model.pt's `backbone.*` keys load there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from medssl.errors import ConfigError
from medssl.models.backbones import build_backbone, load_backbone_state
from medssl.models.classifier import InputNorm, input_normalizer

PAPER_IMAGE_SIZE = 512  # paper 003 §II.A: radiographs resized to 512 × 512
# torchvision's (and mmdetection's) anchors for its image scale: 32 … 512 px over P2 … P6
PAPER_ANCHORS = (32, 64, 128, 256, 512)


def anchor_sizes(image_size: int) -> tuple[tuple[int, ...], ...]:
    """The paper's anchor geometry scaled to the data: 32 … 512 px at 512 px images, so the
    smallest anchor covers the same share of the image (≥ 2 px)."""
    scale = image_size / PAPER_IMAGE_SIZE
    return tuple((max(2, round(a * scale)),) for a in PAPER_ANCHORS)


# torchvision's proposal counts (pre-NMS, post-NMS) per image, train and test
PAPER_PROPOSALS = {"train": (2000, 2000), "test": (1000, 1000)}
MIN_PROPOSALS = 100


def proposal_counts(image_size: int) -> dict[str, int]:
    """torchvision's RPN proposal counts scaled with the image area from the paper's 512 px
    (at least 100 per image): a 128 px image has 1/16 of the anchors, and 1,000 regions of
    interest per image would make the box head 10× the cost of the backbone."""
    scale = (image_size / PAPER_IMAGE_SIZE) ** 2
    out = {}
    for split, (pre, post) in PAPER_PROPOSALS.items():
        out[f"rpn_pre_nms_top_n_{split}"] = max(MIN_PROPOSALS, round(pre * scale))
        out[f"rpn_post_nms_top_n_{split}"] = max(MIN_PROPOSALS, round(post * scale))
    return out


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a FrozenBatchNorm2d with its statistics and affine
    parameters (torchvision's and mmdetection's choice for a pre-trained backbone fine-tuned with
    2 images per batch)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class Detector(FasterRCNN):
    """normalize → Faster R-CNN + FPN over `backbone` (a ResNet), `num_classes` foreground
    classes (label k + 1 is class k; 0 is background). `forward(images [B, C, H, W] in [0, 1],
    targets=None)`: training → the four losses; eval → per image {boxes, labels, scores}.
    `backbone_state`: the ResNet's weights (pre-trained elsewhere); `frozen`: its batch norms are
    frozen and only its last `trainable_layers` stages train (torchvision's recipe for a
    pre-trained backbone); otherwise everything trains, batch norm included (from random)."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = PAPER_IMAGE_SIZE,
        input_norm: InputNorm = "dataset",
        *,
        frozen: bool = False,
        backbone_state: Mapping[str, torch.Tensor] | None = None,
        trainable_layers: int = 3,
        detections_per_image: int = 100,
    ) -> None:
        if not backbone.startswith("resnet"):
            raise ConfigError(
                f"faster-rcnn needs a ResNet backbone (train.backbone), not {backbone}"
            )
        net, _ = build_backbone(backbone, in_channels)
        if backbone_state is not None:
            load_backbone_state(net, backbone_state, "the detector's backbone weights")
        if frozen:
            freeze_batchnorm(net)
        layers = trainable_layers if frozen else 5
        body = _resnet_fpn_extractor(net, layers)  # type: ignore[arg-type]
        anchors = anchor_sizes(image_size)
        super().__init__(
            body,
            num_classes=num_classes + 1,
            min_size=image_size,
            max_size=image_size,
            image_mean=[0.0] * in_channels,
            image_std=[1.0] * in_channels,
            rpn_anchor_generator=AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * len(anchors)),
            box_detections_per_img=detections_per_image,
            **proposal_counts(image_size),
        )
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.image_size = image_size
        self.input_norm = input_norm
        self.frozen = frozen
        self.trainable_layers = layers
        self.normalize = input_normalizer(input_norm, in_channels)

    @property
    def num_classes(self) -> int:
        return self.roi_heads.box_predictor.cls_score.out_features - 1

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
    ) -> Any:
        x = self.normalize(images)
        return super().forward(list(x.unbind(0)), targets)

    def config(self) -> dict[str, Any]:
        """What rebuilds this module (model.pt meta)."""
        return {
            "input_norm": self.input_norm,
            "frozen": self.frozen,
            "trainable_layers": self.trainable_layers,
            "detections_per_image": self.roi_heads.detections_per_img,
        }


def backbone_state_from(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ResNet's weights from a medssl model.pt / encoder.pt state dict (`backbone.*`) or a
    detector's (`backbone.body.*`), without the pooled classifier's leftovers (fc)."""
    for prefix in ("backbone.body.", "backbone."):
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return {k: v for k, v in found.items() if not k.startswith("fc.")}
    return {}


def build_detector(meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> Detector:
    """A detector from a model.pt's meta and state dict (eval mode, CPU)."""
    model = Detector(
        meta["backbone"],
        len(meta["classes"]),
        int(meta["in_channels"]),
        int(meta["image_size"]),
        meta.get("input_norm", "dataset"),
        frozen=bool(meta.get("frozen")),
        trainable_layers=int(meta.get("trainable_layers", 3)),
        detections_per_image=int(meta.get("detections_per_image", 100)),
    )
    model.load_state_dict(state)
    return model.eval()
