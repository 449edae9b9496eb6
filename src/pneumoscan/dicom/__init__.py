"""dicom: results as DICOM objects (TID 1500 SR, heatmap SC), the DICOM node and DICOMweb.

Hospital integration: an archive routes films to `pneumoscan dicom-node`, or `pneumoscan predict
--dicom-out/--stow` reads them, and the results go back into each film's study.

What it owns:

- `report`: the TID 1500 measurement report (a Comprehensive 3D SR, IHE AI Results), one per film;
- `capture`: the heatmap overlay as a Secondary Capture image, with the notice burned in;
- `codes`: every coded concept those objects use (SNOMED CT, DCM, UCUM), in one place;
- `producer`: the model and software facts every object carries, and their stable UIDs;
- `results`: the objects for one prediction; `outputs`: `pneumoscan predict --dicom-out/--stow`;
- `delivery`: sending objects by DIMSE C-STORE, DICOMweb STOW-RS or into a folder;
- `spool`: received films and unsent results on disk, with atomic writes, retry and backoff;
- `node`: `pneumoscan dicom-node`, a C-STORE SCP (with C-ECHO) that predicts on a bounded queue.

The developer harnesses (throwaway Orthanc and node processes, the node benchmark, the
screenshots) live in `pneumoscan.devtools`, above this layer.

May import: `runtime` and `core` (the ONNX model, the predict path, the image reader, the
notice, errors, atomic writes), and the `[dicom]` extra's highdicom, pynetdicom and
dicomweb-client, inside the modules that need them, so `import pneumoscan.dicom` costs nothing and
`pneumoscan --help` never loads them. Never torch, and not `api`, `training`, `evaluation`,
`site`, `research` or `serve` (it sits beside `serve`, level 7). The `dicom-node` command lives
in `cli/dicom.py`.

Privacy: the DICOM objects carry the film's Patient and Study modules, as an archive needs them to
file the result with the film; nothing else does. No patient field, and no UID from a received
film, reaches a log line, an error message or a file name.
"""

import logging


def quiet_libraries() -> None:
    """Keep the DICOM libraries' own logging at warnings: at debug level pynetdicom dumps whole
    datasets (patient fields included) and dicomweb-client prints request headers (a bearer
    token included). The commands call this (a process-wide setting, so only commands do);
    `--verbose` never turns them back on."""
    for name in ("pynetdicom", "dicomweb_client", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom's complaints about a header quote its values (a patient's name among them), both
    # as log records and as Python warnings: route the warnings to logging, and keep neither.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
