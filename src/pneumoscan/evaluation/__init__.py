"""evaluation: how good a model is, and how to calibrate it; torch-free.

Owns the metrics (`metrics`), temperature, threshold rules and cross-fitting (`calibration`),
labelled films scored through the runtime (`scoring`), the evaluation report (`report`),
`evaluate` of an exported model (`evaluate`), and the acquisition-shift perturbations and stress
benchmark (`perturb`, `stress`).

May import: `core`, `runtime`, and scikit-learn, SciPy and matplotlib (the [eval] extra).
Never torch.
"""
