"""Every coded concept the DICOM results use, in one place.

Standard terminologies where one exists: SNOMED CT (SCT) for the findings and for present /
absent / indeterminate, DICOM's own codes (DCM) for the report's structure, UCUM for units. The
gate's verdict has no standard code, so it uses a private coding scheme, declared in each report's
Coding Scheme Identification Sequence as DICOM asks.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pneumoscan.core.errors import ModelFileError

# Findings, one per class name a pneumoscan model can have (labels.CLASS_NAMES).
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
FINDINGS: dict[str, Code] = {
    "normal": codes.SCT.Normal,  # 17621005
    "pneumonia": PNEUMONIA,
    "bacteria": Code("53084003", "SCT", "Bacterial pneumonia"),
    "virus": Code("75570004", "SCT", "Viral pneumonia"),
}

# The value of each finding's qualitative evaluation (CID 240 and 4220).
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
INDETERMINATE = codes.SCT.Indeterminate  # 82334004

# The report's structure.
REPORT_TITLE = codes.DCM.ImagingMeasurementReport  # 126000, TID 1500
SOURCE = Code("260753009", "SCT", "Source")  # an image library entry
PROCEDURE = Code("399208008", "SCT", "Plain chest X-ray")
PROBABILITY = codes.DCM.Probability  # 122157
THRESHOLD = codes.DCM.ThresholdValue  # 122411
COMMENT = codes.DCM.Comment  # 121106
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # 109102, the IHE AIR contributing equipment

# Probabilities are unitless; the UCUM annotation says what the number is.
UNIT_PROBABILITY = Code("{probability}", "UCUM", "probability")

# The gate (out-of-distribution check): no standard terminology covers it.
PRIVATE_SCHEME = "99PNEUMOSCAN"
PRIVATE_SCHEME_NAME = "pneumoscan local codes"
GATE = Code("GATE", PRIVATE_SCHEME, "Chest radiograph gate")
GATE_ACCEPTED = Code("ACCEPTED", PRIVATE_SCHEME, "Accepted as a frontal chest radiograph")
GATE_REFUSED = Code("REFUSED", PRIVATE_SCHEME, "Refused: unlike a frontal chest radiograph")
GATE_OFF = Code("OFF", PRIVATE_SCHEME, "Gate switched off")


def finding(class_name: str) -> Code:
    """The SNOMED CT concept for one of a model's classes."""
    try:
        return FINDINGS[class_name]
    except KeyError:
        raise ModelFileError(
            f"class {class_name!r} has no SNOMED CT code in pneumoscan.dicom.codes; DICOM results "
            f"exist for models whose classes are among {', '.join(FINDINGS)}."
        ) from None
