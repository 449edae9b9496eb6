"""The out-of-distribution gate: is this input a chest radiograph like the training films at all?

A Mahalanobis-style distance (Lee et al. 2018) in three spaces:

- **content**: the last feature map's channel means, the features the head classifies;
- **texture**: the channel standard deviations of an early feature map (the last backbone stage
  at a quarter of the input resolution), i.e. how much edge and grain energy each low-level
  filter sees;
- **layout**: the model input shrunk to 8 x 8, where a frontal chest film has two dark lungs
  either side of a bright mediastinum.

For each part, fit the mean and the top principal directions of the training films' vectors; a
vector's score is its whitened distance within those directions plus its scaled distance outside
them, divided by the part's own `GATE_QUANTILE` of the training scores. The gate's score is the
larger of the parts (plus a penalty for inputs without a radiograph's spatial structure), and the
threshold is the `GATE_QUANTILE` of the training films' gate scores.

Why three: the content part alone let gradients, chequerboards, text pages, colour wheels and
star fields through (51 of 64 non-radiographs refused): the head's features of such inputs sit
near the films' mean, but their low-level texture is nothing like a film's. With texture, smooth
1/f "clouds" still passed; they have a film's grain but no chest's layout. All three are
computed inside the ONNX graph (its `ood_score` output), so the torch-free runtime answers
`not a chest X-ray` (docs/ood.md has the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pneumoscan.core.decision import GATE_QUANTILE
from pneumoscan.core.refusal import STRUCTURE_FLOOR

COMPONENTS = 64
FILMS_PER_COMPONENT = 10
# Radiographs are smooth at the model's resolution: the correlation of neighbouring input pixels
# was at least 0.89 for every validation film under every stress perturbation (blur, noise,
# sharpening, JPEG, crops...), against 0 for a blank image and 0.23 for pure noise, which the
# feature distance alone can miss once intensities are equalised. Below the floor, the score
# jumps far past any threshold.
STRUCTURE_PENALTY = 1000.0
# In the name of ship's gate cache: a change of the gate's design refits it.
GATE_DESIGN = "content-texture-layout-member0"
CONTENT = "content"
TEXTURE = "texture"
LAYOUT = "layout"
LAYOUT_SIDE = 8
MIN_FILMS_FOR_SHAPE_PARTS = 1000  # texture and layout parts are fitted from this many films
# What each part reads, as the model card says it.
PART_DESCRIPTIONS = {
    CONTENT: "the channel means of the last feature map (content)",
    TEXTURE: "the channel standard deviations of an early stage (texture)",
    LAYOUT: f"the input shrunk to {LAYOUT_SIDE} x {LAYOUT_SIDE} (layout)",
}
_TENSORS = ("mean", "components", "scales", "residual_scale", "scale")


@dataclass
class GatePart:
    """One feature space of the gate (`part_vectors` says how each is read)."""

    name: str
    taps: tuple[str, ...]
    mean: np.ndarray  # (F,)
    components: np.ndarray  # (F, k) orthonormal principal directions
    scales: np.ndarray  # (k,) 1 / sqrt(variance) along each direction
    residual_scale: float  # 1 / mean variance of what the components leave out
    scale: float  # this part's GATE_QUANTILE over the training films: its scores are divided by it

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            key: torch.as_tensor(np.asarray(getattr(self, key), dtype=np.float32))
            for key in _TENSORS
        }


@dataclass
class OodGate:
    parts: list[GatePart] = field(default_factory=list)
    threshold: float = 0.0
    # The content part reads the first `width` feature channels: an ensemble's first member's
    # (`member_gate`); 0 reads them all. Fitted on three members' 3,840 features side by side,
    # the gate refused 99.6% of films with a 20% black border and 95.7% of collimated films;
    # one member's gate refuses what a single network's does.
    width: int = 0

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(name for part in self.parts for name in part.taps)

    def to_tensors(self) -> dict:
        """The model file's and the gate cache's form: tensors and the parts' names and taps."""
        return {
            "threshold": torch.tensor(float(self.threshold)),
            "width": int(self.width),
            "parts": [{"name": p.name, "taps": list(p.taps), **p.tensors()} for p in self.parts],
        }

    @classmethod
    def from_tensors(cls, tensors: dict) -> OodGate:
        # Model files before the texture part hold one content part's tensors at the top level.
        stored = tensors.get("parts") or [{"name": CONTENT, "taps": [], "scale": 1.0, **tensors}]
        parts = [
            GatePart(
                name=part["name"],
                taps=tuple(part["taps"]),
                mean=_numpy(part["mean"]),
                components=_numpy(part["components"]),
                scales=_numpy(part["scales"]),
                residual_scale=float(part["residual_scale"]),
                scale=float(part["scale"]),
            )
            for part in stored
        ]
        width = int(tensors.get("width", 0))  # gates before one-member gates read every channel
        return cls(parts=parts, threshold=float(tensors["threshold"]), width=width)


def _numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def gate_scores(features: torch.Tensor, mean, components, scales, residual_scale) -> torch.Tensor:
    """Per-row score: sum of squared whitened projections + scaled squared residual, per dimension."""
    centered = features - mean
    projected = centered @ components
    residual = centered - projected @ components.T
    inside = ((projected * scales) ** 2).sum(dim=1)
    outside = (residual**2).sum(dim=1) * residual_scale
    return (inside + outside) / (components.shape[1] + 1)


def structure_penalty(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) model inputs -> (N,) penalty: 0 for images with a radiograph's spatial
    structure, large for blank, noise-like or checkerboard inputs (neighbour correlation under
    STRUCTURE_FLOOR)."""
    plane = images[:, 0]
    centred = plane - plane.mean(dim=(1, 2), keepdim=True)
    variance = (centred**2).mean(dim=(1, 2))
    across = (centred[:, :, 1:] * centred[:, :, :-1]).mean(dim=(1, 2))
    down = (centred[:, 1:, :] * centred[:, :-1, :]).mean(dim=(1, 2))
    correlation = (across + down) / (2 * variance.clamp_min(1e-6))
    return STRUCTURE_PENALTY * torch.relu(STRUCTURE_FLOOR - correlation)


def feature_model(model: nn.Module) -> nn.Module:
    """The network whose features the gate reads (a binary reading's three-class source)."""
    return getattr(model, "source", model)


def texture_taps(model: nn.Module, size: int, channels: int) -> tuple[str, ...]:
    """For each network in `feature_model(model)` (one, or an ensemble's members), the module
    path of the last backbone stage whose output is at a quarter of the input resolution (the
    end of the stride-4 stage: EfficientNet-Lite's second 24-channel block, ResNet's layer1);
    empty when there is none (a network without such a stage)."""
    model = feature_model(model)
    networks = [(f"members.{i}.", m) for i, m in enumerate(getattr(model, "members", []))]
    networks = networks or [("", model)]
    taps = []
    for prefix, network in networks:
        names = [f"backbone.{group[-1]}" for group in getattr(network, "stage_names", [])]
        recorder = TapRecorder(network, names)
        try:
            with torch.no_grad():
                probe = torch.zeros(1, channels, size, size, device=_device(network))
                network.eval().forward_features(probe)
        finally:
            recorder.remove()
        quarter = [n for n in names if size // 8 < recorder.outputs[n].shape[-1] <= -(-size // 4)]
        if not quarter:
            return ()
        taps.append(prefix + quarter[-1])
    return tuple(taps)


class TapRecorder:
    """Forward hooks that keep the latest outputs of named modules of a model."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] | list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [
            model.get_submodule(name).register_forward_hook(self._keep(name)) for name in names
        ]

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def member_gate(model: nn.Module, taps: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """(taps, width) of a gate that reads one network: an ensemble's first member (its texture
    tap and its feature channels), or the whole of a single network (width 0: every channel)."""
    model = feature_model(model)
    widths = getattr(model, "widths", None)
    if not widths:
        return taps, 0
    return tuple(tap for tap in taps if tap.startswith("members.0.")), int(widths[0])


def part_vectors(
    name: str,
    taps: tuple[str, ...],
    images: torch.Tensor,
    features: torch.Tensor,
    recorder: TapRecorder,
    width: int = 0,
) -> torch.Tensor:
    """(N, F) vectors of one gate part from a forward pass: the content part's channel means of
    the final `features` (the first `width` channels when it is not 0), the texture part's
    channel standard deviations of the hooked `taps`, the layout part's first input channel
    averaged down to LAYOUT_SIDE x LAYOUT_SIDE cells."""
    if name == LAYOUT:
        cell = images.shape[-1] // LAYOUT_SIDE
        pooled = nn.functional.avg_pool2d(images[:, :1], cell)[..., :LAYOUT_SIDE, :LAYOUT_SIDE]
        return pooled.flatten(1)
    if name == TEXTURE:
        return torch.cat([recorder.outputs[tap].std(dim=(2, 3)) for tap in taps], dim=1)
    return (features[:, :width] if width else features).mean(dim=(2, 3))


class GateModule(nn.Module):
    """The gate as torch operations on one forward pass: exported into the ONNX graph and used
    to check it (`model_gate_scores`)."""

    def __init__(self, gate: OodGate) -> None:
        super().__init__()
        self.parts = [(part.name, part.taps) for part in gate.parts]
        self.width = gate.width
        for index, part in enumerate(gate.parts):
            for key, value in part.tensors().items():
                self.register_buffer(f"part{index}_{key}", value)

    def forward(
        self, images: torch.Tensor, features: torch.Tensor, recorder: TapRecorder
    ) -> torch.Tensor:
        scores = []
        for index, (name, taps) in enumerate(self.parts):
            tensors = [getattr(self, f"part{index}_{key}") for key in _TENSORS]
            vectors = part_vectors(name, taps, images, features, recorder, self.width)
            scores.append(gate_scores(vectors, *tensors[:4]) / tensors[4])
        return torch.stack(scores).amax(dim=0) + structure_penalty(images)


@torch.no_grad()
def model_gate_scores(model: nn.Module, gate: OodGate, images: torch.Tensor) -> torch.Tensor:
    """The gate's scores of model inputs (N, C, H, W), computed in torch (the ONNX graph's twin)."""
    network = feature_model(model).eval()
    recorder = TapRecorder(network, gate.taps)
    try:
        features = network.forward_features(images)
        return GateModule(gate)(images, features, recorder)
    finally:
        recorder.remove()


@torch.no_grad()
def gate_features(
    model: nn.Module, batches, taps: tuple[str, ...] = (), width: int = 0
) -> dict[str, np.ndarray]:
    """Each gate part's vectors for every batch of (images, _): content (of the first `width`
    channels, or all) and layout always, the texture part when `taps` names its modules."""
    network = feature_model(model).eval()
    if width:  # one member's gate: that member's pass alone gives the same vectors
        network = network.members[0]
        taps = tuple(tap.removeprefix("members.0.") for tap in taps)
    device = _device(network)  # the training device (networks.scoring_device)
    recorder = TapRecorder(network, taps)
    names = [CONTENT, LAYOUT] + ([TEXTURE] if taps else [])
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    try:
        for images, _ in batches:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            features = network.forward_features(images)
            for name in names:
                vectors = part_vectors(name, taps, images, features, recorder, width)
                parts[name].append(vectors.float().cpu())
    finally:
        recorder.remove()
    return {name: torch.cat(rows).numpy() for name, rows in parts.items()}


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def fit_gate(
    features: dict[str, np.ndarray] | np.ndarray,
    taps: tuple[str, ...] = (),
    components: int = COMPONENTS,
    quantile: float = GATE_QUANTILE,
    width: int = 0,
) -> OodGate:
    """Fit on the training films' part vectors (`gate_features`, of the first `width` channels),
    or on one (N, F) array of pooled content features."""
    if not isinstance(features, dict):
        features = {CONTENT: features}
    # Texture and layout need many films: fitted on the 96 films of a one-epoch site fine-tune,
    # they refused 48 of the site's 238 films (content alone: 16). Below the floor, content only.
    features = {
        name: vectors
        for name, vectors in features.items()
        if name == CONTENT or len(vectors) >= MIN_FILMS_FOR_SHAPE_PARTS
    }
    fitted = [
        _fit_part(name, taps if name == TEXTURE else (), vectors, components, quantile)
        for name, vectors in features.items()
    ]
    combined = np.max([scores / part.scale for part, scores in fitted], axis=0)
    parts = [part for part, _ in fitted]
    return OodGate(parts=parts, threshold=float(np.quantile(combined, quantile)), width=width)


def _fit_part(name, taps, vectors, components, quantile) -> tuple[GatePart, np.ndarray]:
    """One part fitted on its training vectors, and those vectors' scores under it."""
    vectors = vectors.astype(np.float64)
    mean = vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    # At most one direction per 10 films: whitening more directions than the films can estimate
    # makes every new film look far away (a site fine-tune on ~100 films refused 60% of its own
    # held-out films with 64).
    k = min(components, len(singular) - 1, max(1, len(vectors) // FILMS_PER_COMPONENT))
    variance = singular**2 / (len(vectors) - 1)
    residual_variance = variance[k:].sum() / max(vectors.shape[1] - k, 1)
    part = GatePart(
        name=name,
        taps=tuple(taps),
        mean=mean,
        components=vt[:k].T,
        scales=1.0 / np.sqrt(variance[:k] + 1e-8),
        residual_scale=float(1.0 / (residual_variance + 1e-8)),
        scale=1.0,
    )
    scores = _part_scores(part, vectors)
    part.scale = float(np.quantile(scores, quantile))
    return part, scores


def _part_scores(part: GatePart, vectors: np.ndarray) -> np.ndarray:
    tensors = [
        torch.from_numpy(np.asarray(x, dtype=np.float64))
        for x in (vectors, part.mean, part.components, part.scales)
    ]
    return gate_scores(*tensors, part.residual_scale).numpy()
