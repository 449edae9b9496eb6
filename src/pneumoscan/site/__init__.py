"""site: a site's own labelled films: validate a model, recalibrate it, simulate a site.

Owns `validate` (the model as it is, torch-free), `calibrate` (temperature, threshold, conformal
scores and gate refitted on part of the films, before/after on the rest; conformal scores
cross-fitted over patient folds; an optional shift to the site's class shares), their reports
and the recalibrated model's card (`report`, rendered from `templates/`), and a simulated site
for demonstrations (`simulate`).

May import: `core`, `runtime`, `evaluation`, and `training` (calibrate writes model files).
"""
