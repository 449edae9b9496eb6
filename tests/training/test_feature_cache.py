"""The frozen-backbone feature cache: features are reused only for the weights that made them."""

from types import SimpleNamespace

import numpy as np
import torch

from pneumoscan.training.fit import _features
from pneumoscan.training.networks import create_model, get_architecture


def _network(seed: int):
    torch.manual_seed(seed)
    return create_model("seed000-a", 2, head="linear", pretrained=False, image_size=32).eval()


def test_different_backbone_weights_get_their_own_cached_features(tmp_path):
    """`train --init other.pt model.strategy=frozen` on the same films and architecture must not
    read the features that another network's backbone (e.g. ImageNet's) produced."""
    spec = get_architecture("seed000-a").preprocess.with_size(32)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    config = SimpleNamespace(
        data=SimpleNamespace(cache_dir=str(tmp_path)),
        model=SimpleNamespace(arch="seed000-a", pretrained=False),
    )
    run_data = SimpleNamespace(pixels={32: pixels})
    first, second = _network(0), _network(1)

    first_features = _features(config, first, run_data, spec, "linear")
    second_features = _features(config, second, run_data, spec, "linear")

    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    assert not torch.equal(first_features, second_features)
    # The same weights again: read back from the cache, not recomputed under another name.
    again = _features(config, _network(1), run_data, spec, "linear")
    assert torch.equal(again, second_features)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
