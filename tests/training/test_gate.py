"""The gate's fit: which feature spaces it uses, and its threshold."""

import numpy as np

from pneumoscan.core.decision import GATE_QUANTILE
from pneumoscan.training.gate import (
    CONTENT,
    LAYOUT,
    MIN_FILMS_FOR_SHAPE_PARTS,
    TEXTURE,
    _part_scores,
    fit_gate,
)


def _features(films: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        CONTENT: rng.normal(size=(films, 40)),
        LAYOUT: rng.normal(size=(films, 16)),
        TEXTURE: rng.normal(size=(films, 8)),
    }


def test_few_films_fit_the_content_part_only():
    """A small site fine-tune's gate in three spaces refused a fifth of the site's own films."""
    gate = fit_gate(_features(MIN_FILMS_FOR_SHAPE_PARTS - 1), taps=("backbone.x",))
    assert [part.name for part in gate.parts] == [CONTENT]


def test_many_films_fit_every_part_and_the_threshold_is_the_quantile_of_the_larger_score():
    features = _features(MIN_FILMS_FOR_SHAPE_PARTS)
    gate = fit_gate(features, taps=("backbone.x",))
    assert [part.name for part in gate.parts] == [CONTENT, LAYOUT, TEXTURE]
    assert [part.taps for part in gate.parts] == [(), (), ("backbone.x",)]
    scaled = np.array([_part_scores(p, features[p.name]) / p.scale for p in gate.parts])
    for row, part in zip(scaled, gate.parts):  # each part scaled by its own quantile
        assert np.quantile(row * part.scale, GATE_QUANTILE) == np.float64(part.scale)
    combined = scaled.max(axis=0)
    assert (combined > gate.threshold).mean() <= 1 - GATE_QUANTILE + 1e-9
    # an input far off in one space alone is refused
    outlier = {name: values[:1].copy() for name, values in features.items()}
    outlier[LAYOUT] += 25.0
    part = next(p for p in gate.parts if p.name == LAYOUT)
    assert _part_scores(part, outlier[LAYOUT])[0] / part.scale > gate.threshold


def test_an_ensembles_gate_reads_its_first_member_only():
    """Fitted on three members' features side by side, the gate refused 95.7% of collimated
    films; the ensemble's gate reads the first member's texture stage and feature channels."""
    import torch

    from pneumoscan.training.gate import member_gate, part_vectors, texture_taps
    from pneumoscan.training.networks import EnsembleClassifier, create_model

    members = [
        create_model("efficientnet-lite0", 3, head="linear", pretrained=False, image_size=64)
        for _ in range(2)
    ]
    info = {"preprocess": {"size": 64}}
    ensemble = EnsembleClassifier(members, [info, info])
    taps = texture_taps(ensemble, 64, 3)
    assert [tap.split(".")[1] for tap in taps] == ["0", "1"]
    kept, width = member_gate(ensemble, taps)
    assert kept == taps[:1] and width == ensemble.widths[0] == 1280
    assert member_gate(members[0], ("backbone.x",)) == (("backbone.x",), 0)

    features = torch.rand(2, sum(ensemble.widths), 2, 2)
    content = part_vectors("content", (), torch.rand(2, 3, 64, 64), features, None, width)
    assert torch.equal(content, features[:, :1280].mean(dim=(2, 3)))
