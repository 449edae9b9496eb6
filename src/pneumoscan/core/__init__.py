"""core: what turns files into pixels and numbers into decisions.

Errors, labels and file names, atomic file I/O, the hardware line, image reading (every input ->
[0, 1] pixels), preprocessing, the decision rule, conformal sets, the shipped models' location,
the training config, and scanning a data folder (and its patient split).

May import: the standard library, numpy, Pillow, pydicom and PyYAML (the lean install), and
scikit-learn lazily for the patient split only. Never another pneumoscan layer.
"""
