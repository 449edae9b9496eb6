"""The out-of-distribution gate: is this input a chest radiograph like the training films at all?

A Mahalanobis-style distance in the network's own pooled feature space (Lee et al. 2018): fit the
mean and the top principal directions of the training films' features; an input's score is its
whitened distance within those directions plus its scaled distance outside them. The threshold
is a high quantile of the training films' scores. The score is computed inside the ONNX graph (a
third output), so the torch-free runtime can refuse photos, documents, screenshots, blank or
noise images with `not a chest X-ray` instead of a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


@dataclass
class OodGate:
    mean: np.ndarray  # (F,)
    components: np.ndarray  # (F, k) orthonormal principal directions
    scales: np.ndarray  # (k,) 1 / sqrt(variance) along each direction
    residual_scale: float  # 1 / mean variance of what the components leave out
    threshold: float

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float32)),
            "components": torch.from_numpy(self.components.astype(np.float32)),
            "scales": torch.from_numpy(self.scales.astype(np.float32)),
            "residual_scale": torch.tensor(float(self.residual_scale)),
            "threshold": torch.tensor(float(self.threshold)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> OodGate:
        return cls(
            mean=tensors["mean"].numpy(),
            components=tensors["components"].numpy(),
            scales=tensors["scales"].numpy(),
            residual_scale=float(tensors["residual_scale"]),
            threshold=float(tensors["threshold"]),
        )


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


def fit_gate(
    features: np.ndarray, components: int = COMPONENTS, quantile: float = GATE_QUANTILE
) -> OodGate:
    """Fit on the pooled features (N, F) of training films."""
    features = features.astype(np.float64)
    mean = features.mean(axis=0)
    centered = features - mean
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    # At most one direction per 10 films: whitening more directions than the films can estimate
    # makes every new film look far away (a site fine-tune on ~100 films refused 60% of its own
    # held-out films with 64).
    k = min(components, len(singular) - 1, max(1, len(features) // FILMS_PER_COMPONENT))
    variance = singular**2 / (len(features) - 1)
    basis = vt[:k].T
    scales = 1.0 / np.sqrt(variance[:k] + 1e-8)
    residual_variance = variance[k:].sum() / max(features.shape[1] - k, 1)
    residual_scale = 1.0 / (residual_variance + 1e-8)
    tensors = [torch.from_numpy(x) for x in (features, mean, basis, scales)]
    scores = gate_scores(*tensors, residual_scale).numpy()
    threshold = float(np.quantile(scores, quantile))
    return OodGate(mean, basis, scales, float(residual_scale), threshold)


@torch.no_grad()
def pooled_features(model, batches) -> np.ndarray:
    """Global-average-pooled backbone features for every batch of (images, _)."""
    model.eval()
    device = next(model.parameters()).device  # the training device (networks.scoring_device)
    outputs = [
        model.forward_features(
            images.to(device).contiguous(memory_format=torch.channels_last)
        ).mean(dim=(2, 3))
        for images, _ in batches
    ]
    return torch.cat(outputs).float().cpu().numpy()
