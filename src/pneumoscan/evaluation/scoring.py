"""Labelled films through the exported model: raw logits and gate scores of every film that
could be read, for the torch-free reports (`evaluate` of an .onnx model, a site's `validate` and
`calibrate`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pneumoscan.core.dataset import Sample
from pneumoscan.core.errors import DatasetError, InputError
from pneumoscan.core.images import decode_input
from pneumoscan.core.preprocess import prepare
from pneumoscan.runtime.model import OnnxModel

logger = logging.getLogger(__name__)


@dataclass
class FilmScores:
    """The model's raw outputs on the films it could read."""

    samples: list[Sample]
    targets: np.ndarray
    logits: np.ndarray  # before the model's temperature
    gate: np.ndarray | None  # gate scores, None for a model without a gate
    failed: list[str]  # one line per film that could not be read

    @property
    def patients(self) -> list[str]:
        return [s.patient for s in self.samples]

    def subset(self, index: np.ndarray) -> FilmScores:
        return FilmScores(
            [self.samples[i] for i in index],
            self.targets[index],
            self.logits[index],
            None if self.gate is None else self.gate[index],
            [],
        )


def score_films(
    model: OnnxModel,
    samples: list[Sample],
    targets: np.ndarray,
    batch_size: int = 32,
    strict: bool = False,
) -> FilmScores:
    """Run the model on every film; a film that cannot be read is listed and left out (with
    `strict`, the run stops with the list instead)."""

    def load(sample: Sample):
        try:
            return prepare(
                decode_input(sample.path, str(sample.path), min_side=model.spec.decode_side),
                model.spec,
            ), None
        except InputError as error:
            return None, str(error)
        except OSError as error:
            return None, f"{sample.path}: cannot be read ({error.strerror or error})."

    kept, logits, gate, failed = [], [], [], []
    with ThreadPoolExecutor() as pool:
        for start in range(0, len(samples), batch_size):
            chunk = list(range(start, min(start + batch_size, len(samples))))
            loaded = list(pool.map(load, [samples[i] for i in chunk]))
            ready = [(i, tensor) for i, (tensor, _) in zip(chunk, loaded) if tensor is not None]
            failed += [error for _, error in loaded if error is not None]
            if not ready:
                continue
            outputs = model.run(np.stack([tensor for _, tensor in ready]), cam=False)
            kept += [i for i, _ in ready]
            logits.append(outputs["logits"])
            if "ood_score" in outputs:
                gate.append(outputs["ood_score"])
    if failed and strict:
        listing = "\n  ".join(failed)
        raise DatasetError(
            f"{len(failed)} of {len(samples)} image(s) could not be read (--strict):\n  {listing}"
        )
    if failed:
        logger.warning(
            "%d of %d films could not be read and are left out", len(failed), len(samples)
        )
    if not kept:
        raise DatasetError(f"none of the {len(samples)} films could be read: {failed[0]}")
    index = np.asarray(kept)
    return FilmScores(
        [samples[i] for i in index],
        targets[index],
        np.concatenate(logits).astype(np.float64),
        np.concatenate(gate) if gate else None,
        failed,
    )
