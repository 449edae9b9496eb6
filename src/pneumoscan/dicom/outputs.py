"""`pneumoscan predict FILES --dicom-out DIR [--stow URL]`: DICOM results for each DICOM film.

Results stream through `DicomOutputs.process` as `predict` makes them: each DICOM film's SR (and
heatmap SC, when there is one) is written to DIR as `00012_<name>_sr.dcm` / `_sc.dcm` and, with
`--stow`, stored in the archive; the overlay image is then dropped, so memory stays flat over a
long batch. The files hold patient data: they are 0600 in a 0700 folder (0640 and 0750 with
`--group-readable`). A film that is not DICOM gets one line saying why it has no DICOM result; a film whose
results cannot be written or sent gets its own error line, and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from pneumoscan.core.errors import InputError
from pneumoscan.core.fileio import atomic_write_bytes, make_private_dir, private_modes
from pneumoscan.dicom.delivery import DeliveryError, StowDestination
from pneumoscan.dicom.producer import Producer
from pneumoscan.dicom.report import encode
from pneumoscan.dicom.results import read_header, result_objects
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.runtime.predict import ERROR, Result

OBJECT_SUFFIXES = ("_sr.dcm", "_sc.dcm")


class DicomOutputs:
    def __init__(
        self,
        runtime: OnnxModel,
        out_dir: Path | None = None,
        stow: StowDestination | None = None,
        indeterminate_margin: float = 0.0,
        group_readable: bool = False,
    ) -> None:
        self.producer = Producer.from_runtime(runtime, indeterminate_margin)
        self.out_dir = out_dir
        self.file_mode, self.folder_mode = private_modes(group_readable)
        self.stow = stow
        self.notes: list[str] = []  # inputs that get no DICOM result, and why
        self.failures: list[str] = []  # DICOM films whose results were not written or stored
        self.written = 0
        self.stored = 0

    def process(self, results: Iterable[Result]) -> Iterator[Result]:
        """Pass the results through, writing and sending each film's DICOM objects on the way."""
        for index, result in enumerate(results):
            self._one(index, result)
            result.heatmap = None  # in the SC now; the batch must not hold every overlay
            yield result

    def _one(self, index: int, result: Result) -> None:
        source = result.source
        try:
            header = read_header(Path(source), source)
        except InputError as error:
            if result.status != ERROR:  # an unreadable file already has its error line
                self.failures.append(f"{error} No DICOM result written.")
            return
        if header is None:
            self.notes.append(
                f"{source}: not a DICOM file, so no DICOM result (an SR and a heatmap image are "
                "filed in the film's own patient and study, which only a DICOM film carries)."
            )
            return
        try:
            objects = result_objects(header, result, self.producer)
            encoded = [encode(item) for item in objects]
        except Exception as error:  # highdicom checks the copied header; its text may quote it
            self.failures.append(
                f"{source}: cannot build its DICOM results ({type(error).__name__} from a header "
                "value); fix the film's header or re-export it."
            )
            return
        paths: list[Path] = []
        if self.out_dir is not None:
            stem = _safe_stem(source)
            for data, suffix in zip(encoded, OBJECT_SUFFIXES):
                path = self.out_dir / f"{index:05d}_{stem}{suffix}"
                try:
                    atomic_write_bytes(path, data, self.file_mode)
                except OSError as error:
                    self.failures.append(
                        f"{source}: cannot write {path} ({error.strerror or error}); "
                        "free space or choose another --dicom-out."
                    )
                    return
                paths.append(path)
            self.written += 1
        if self.stow is not None:
            try:
                self.stow.send(objects)
            except DeliveryError as error:
                kept = f" (they are in {self.out_dir})" if paths else ""
                again = "try again later" if error.retry else "check what the archive accepts"
                self.failures.append(
                    f"{source}: its DICOM results were not stored: {error}{kept}; {again}."
                )
                return
            self.stored += 1


def _safe_stem(source: str) -> str:
    stem = Path(source).stem
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in stem)[:80]
    return safe or "film"


def open_outputs(
    runtime: OnnxModel,
    out_dir: Path | None,
    stow_url: str | None,
    token: str | None = None,
    indeterminate_margin: float = 0.0,
    group_readable: bool = False,
) -> DicomOutputs:
    """`DicomOutputs` for predict's options, with a clear error for a missing extra or folder."""
    from pneumoscan.core.errors import PneumoscanError

    try:
        import highdicom  # noqa: F401

        if stow_url is not None:
            import dicomweb_client  # noqa: F401
    except ImportError as error:
        raise PneumoscanError(
            f"--dicom-out and --stow need the [dicom] extra ({error.name} is missing): "
            'pip install "pneumoscan[dicom]"'
        ) from None
    if token is not None and stow_url is None:
        raise PneumoscanError("--token is the bearer token for --stow: give --stow URL too.")
    if out_dir is not None:
        try:
            make_private_dir(out_dir, private_modes(group_readable)[1])
        except OSError as error:
            raise PneumoscanError(
                f"--dicom-out {out_dir}: cannot create this folder ({error.strerror or error})"
            ) from None
    stow = StowDestination(stow_url, token or None) if stow_url is not None else None
    return DicomOutputs(runtime, out_dir, stow, indeterminate_margin, group_readable)
