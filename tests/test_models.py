import pytest
import torch
import torchvision

from medssl.errors import ConfigError
from medssl.models import Classifier, build_classifier, load_model, save_model
from medssl.models.backbones import build_backbone, imagenet_filenames

META = {
    "method": "supervised",
    "backbone": "resnet18",
    "classes": ["a", "b", "c"],
    "in_channels": 1,
    "image_size": 32,
    "task": "multilabel",
}


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet18", 512), ("resnet50", 2048), ("vgg16_bn", 512)]
)
def test_backbones_take_grey_images_and_return_features(name, dim):
    net, feature_dim = build_backbone(name, in_channels=1)
    assert feature_dim == dim
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, dim)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9")


def _fake_imagenet_hub(tmp_path):
    """A torch hub cache dir holding torchvision's resnet18 file name (random weights)."""
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "hub" / "checkpoints" / imagenet_filenames("resnet18")[0]
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    return reference, path


def test_imagenet_init_sums_rgb_filters_into_the_grey_filter(tmp_path):
    reference, path = _fake_imagenet_hub(tmp_path)
    assert path.name == "resnet18-f37072fd.pth"
    model = build_classifier("resnet18", 3, 1, init="imagenet", weights=tmp_path / "hub")
    ref = reference.state_dict()
    got = model.backbone.state_dict()
    assert torch.equal(got["conv1.weight"], ref["conv1.weight"].sum(dim=1, keepdim=True))
    for key in got:
        if key != "conv1.weight":
            assert torch.equal(got[key], ref[key]), key
    # a grey image replicated on RGB gives the same first-layer response
    grey = torch.rand(1, 1, 16, 16)
    assert torch.allclose(
        model.backbone.conv1(grey), reference.conv1(grey.expand(1, 3, 16, 16)), atol=1e-5
    )


def test_imagenet_init_from_a_state_dict_file_keeps_rgb_filters(tmp_path):
    reference, path = _fake_imagenet_hub(tmp_path)
    model = build_classifier("resnet18", 3, 3, init="imagenet", weights=path)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_missing_imagenet_weights_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_classifier("resnet18", 3, 1, init="imagenet", weights=tmp_path / "nohub")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "nohub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "train.weights" in message
    assert "no download" in message


def test_weights_that_do_not_fit_are_a_config_error(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ConfigError, match="do not fit"):
        build_classifier("resnet18", 3, 1, init="imagenet", weights=path)


def test_save_load_roundtrip_normalises_inside_the_module(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, 1).eval()
    save_model(tmp_path / "model.pt", model, META)
    loaded, meta = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, Classifier) and not loaded.training
    assert meta["classes"] == ["a", "b", "c"] and meta["num_classes"] == 3
    x = torch.rand(4, 1, 32, 32)  # [0, 1] pixels
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        expected = model.head(model.backbone((x - model.normalize.mean) / model.normalize.std))
        assert torch.allclose(loaded(x), expected)


def test_save_model_checks_meta(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        save_model(tmp_path / "m.pt", build_classifier("resnet18", 3), {"method": "x"})


def test_load_model_refuses_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a medssl model file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_checkpoint_init_takes_the_backbone_and_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    pretrained = build_classifier("resnet18", 5, 1)
    save_model(tmp_path / "model.pt", pretrained, {**META, "classes": list("abcde")})
    torch.manual_seed(1)
    model = build_classifier("resnet18", 3, 1, init="checkpoint", weights=tmp_path / "model.pt")
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    assert model.head.out_features == 3
    with pytest.raises(ConfigError, match=r"a resnet18 model, but train\.backbone is resnet50"):
        build_classifier("resnet50", 3, 1, init="checkpoint", weights=tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"needs train\.weights"):
        build_classifier("resnet18", 3, 1, init="checkpoint")
