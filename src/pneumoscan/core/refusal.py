"""Why an input is refused as not a frontal chest radiograph: the `gate_reason` of a refusal.

Two checks run before the network: the DICOM header (`header_refusal`, from the three acquisition
fields the image reader hands over, never a patient field) and the radiograph's spatial structure
(`structure_correlation`, the same neighbour correlation the exported gate penalises). The third
reason is the gate's feature distance, decided on the network's own features.
"""

from __future__ import annotations

import numpy as np

WRONG_MODALITY = "wrong modality"
NOT_CHEST = "not chest"
LATERAL_VIEW = "lateral view"
NO_RADIOGRAPH_STRUCTURE = "no radiograph structure"
FEATURE_DISTANCE = "feature distance"
GATE_REASONS = (WRONG_MODALITY, NOT_CHEST, LATERAL_VIEW, NO_RADIOGRAPH_STRUCTURE, FEATURE_DISTANCE)

# Projection radiography: computed and digital radiography (DR and RG where a vendor uses them).
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})
# BodyPartExamined values that are a chest or cover it; a value outside these is refused only
# when it names another body part for sure (an empty or free-text value is let through).
CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_ABDOMEN", "ABDOMENCHEST", "WHOLEBODY"})
OTHER_PARTS = frozenset(
    {
        "SKULL", "HEAD", "BRAIN", "NECK", "CSPINE", "TSPINE", "LSPINE", "SPINE", "PELVIS", "HIP",
        "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW", "SHOULDER", "ARM", "LEG", "FEMUR",
        "ABDOMEN", "EXTREMITY", "BREAST", "JAW", "TMJ", "SINUS", "ORBIT", "HEART", "LIVER",
    }
)  # fmt: skip

# Radiographs are smooth at the model's resolution (see training/gate.py); under this neighbour
# correlation an input has no radiograph structure and the exported gate's score jumps.
STRUCTURE_FLOOR = 0.5


def header_refusal(modality: str, body_part: str, view: str) -> tuple[str, str] | None:
    """(gate_reason, what it found) when the header says this is no frontal chest radiograph;
    None when it does not say so (missing fields are no reason to refuse)."""
    modality, body_part, view = (_field(v) for v in (modality, body_part, view))
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return WRONG_MODALITY, f"DICOM Modality is {modality}, not a radiograph (CR, DX, DR)"
    if body_part and body_part not in CHEST_PARTS and body_part in OTHER_PARTS:
        return NOT_CHEST, f"DICOM BodyPartExamined is {body_part}, not the chest"
    if view in LATERAL_VIEWS:
        return LATERAL_VIEW, f"DICOM ViewPosition is {view}, a lateral view; give the frontal film"
    return None


def _field(value) -> str:
    text = str(value or "").strip().upper().replace(" ", "")
    return text[:16] if text.isprintable() else ""


def structure_correlation(plane: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically neighbouring pixels of a 2-D plane."""
    plane = np.asarray(plane, dtype=np.float64)
    centred = plane - plane.mean()
    variance = max(float((centred**2).mean()), 1e-6)
    across = float((centred[:, 1:] * centred[:, :-1]).mean())
    down = float((centred[1:, :] * centred[:-1, :]).mean())
    return (across + down) / (2 * variance)
