"""core: files to pixels and numbers to decisions; what every other layer stands on.

Owns the errors, labels and file names (`labels`), atomic file I/O (`fileio`), the hardware line,
image reading (`images`: paths, bytes, arrays and DICOM datasets to one [0, 1] pixel contract),
preprocessing (`preprocess`), the decision rule and the gate quantile (`decision`), why an
input is refused (`refusal`: the DICOM header pre-check and the gate reasons), conformal
prediction sets (`conformal`), where the shipped models live (`shipped`), the training config
(`config`) and scanning a data folder, its patient split and a run's split.csv (`dataset`).

May import: the standard library, numpy, Pillow, pydicom and PyYAML (the lean install), and
scikit-learn lazily for the patient split only. No other pneumoscan layer.
"""
