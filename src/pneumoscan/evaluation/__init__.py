"""evaluation: how good a model is, torch-free.

Metrics, calibration and threshold rules with cross-fitting, the acquisition-shift stress panel
and benchmark, scoring labelled films through the runtime, and the evaluation report.

May import: `core`, `runtime`, scikit-learn, SciPy and matplotlib (the [eval] extra). Never torch.
"""
