"""Who makes the DICOM results: the software, the model and the settings that can change an answer.

Every UID pneumoscan writes is derived from what identifies the result (the source film's SOP
Instance UID, the model, its version and these settings) by pydicom's hashing `generate_uid`.
Predicting the same film again with the same model gives the same UIDs, so a result that is sent
twice (a retry after a lost acknowledgement, a node restarted mid-delivery) replaces itself in
the archive instead of appearing twice; results for one study from one model share two series.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pneumoscan import __version__
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.runtime.model import OnnxModel

MANUFACTURER = "pneumoscan (research software)"
DEVICE_NAME = "pneumoscan"
# The two result series, by kind of object: number (high, so they sort after the acquisition's
# own) and description.
RESULT_SERIES = {
    "report": (9901, "pneumoscan AI result - NOT FOR DIAGNOSTIC USE"),
    "capture": (9902, "pneumoscan heatmap - NOT FOR DIAGNOSTIC USE"),
}
# Burned into the Secondary Capture and written into the SR: the notice, shortened to fit a line.
BURNED_IN_NOTICE = "NOT FOR DIAGNOSTIC USE - research software, not a diagnostic device"
NOTICE = NOT_DIAGNOSTIC_NOTICE


@dataclass(frozen=True)
class Producer:
    """The facts about the model and the software that go into every result object."""

    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    threshold: float | None
    gate_threshold: float | None  # None: the gate is off
    indeterminate_margin: float = 0.0
    software_version: str = __version__

    @classmethod
    def from_runtime(cls, runtime: OnnxModel, indeterminate_margin: float = 0.0) -> Producer:
        return cls(
            model_name=runtime.name,
            model_version=runtime.version,
            class_names=runtime.class_names,
            threshold=runtime.threshold,
            gate_threshold=runtime.ood_threshold,
            indeterminate_margin=indeterminate_margin,
        )

    @property
    def model_title(self) -> str:
        """The model as named in the objects: `pneumoscan binary`."""
        return f"{DEVICE_NAME} {self.model_name}"

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings that can change an answer, as the algorithm's parameters."""
        gate = (
            "off"
            if self.gate_threshold is None
            else f"refuses scores above {self.gate_threshold:g}"
        )
        return (f"gate {gate}", f"indeterminate margin {self.indeterminate_margin:g}")

    @property
    def software_versions(self) -> list[str]:
        return [f"pneumoscan {self.software_version}", f"model {self.model_version}"]

    @property
    def device_uid(self) -> str:
        """The observer device: this software with this model version."""
        return self.uid("device")

    def uid(self, *parts: str) -> str:
        """A UID determined by the producer and `parts` (e.g. a source UID and an object kind)."""
        return generate_uid(
            entropy_srcs=[
                "pneumoscan",
                self.model_name,
                self.model_version,
                self.software_version,
                *self.settings,
                *parts,
            ]
        )

    def series_attributes(self, source: Dataset, kind: str, when: datetime.datetime) -> dict:
        """What highdicom's SR and Secondary Capture constructors are given alike for a result
        of `kind` ("report" or "capture") on the film `source`: its series and instance in the
        film's study (UIDs derived from the film's, so a resent result replaces itself), number
        and description, this producer as the equipment, and `when` as content and series time."""
        series_number, series_description = RESULT_SERIES[kind]
        return {
            "series_instance_uid": self.uid(source.StudyInstanceUID, f"{kind} series"),
            "series_number": series_number,
            "sop_instance_uid": self.uid(source.SOPInstanceUID, kind),
            "instance_number": instance_number(source),
            "manufacturer": MANUFACTURER,
            "series_description": series_description,
            "manufacturer_model_name": self.model_title,
            "software_versions": self.software_versions,
            "contributing_equipment": [self.contributing_equipment(when)],
            "content_date": when.date(),
            "content_time": when.time(),
            "series_date": when.date(),
            "series_time": when.time(),
        }

    def contributing_equipment(self, when: datetime.datetime):
        """The IHE AI Results contributing-equipment item: who processed the film, and when."""
        from highdicom import ContributingEquipment

        from pneumoscan.dicom.codes import PROCESSING_EQUIPMENT

        return ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.model_title,
            software_versions=self.software_versions,
            contribution_datetime=when,
            contribution_description=f"AI inference. {NOT_DIAGNOSTIC_NOTICE}",
        )


def instance_number(source: Dataset) -> int:
    """The film's own instance number, so results sort like the films they belong to."""
    try:
        number = int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1
    return number if 0 < number < 2**31 else 1
