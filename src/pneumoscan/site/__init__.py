"""site: a site's own labelled films: validate a model on them, recalibrate it for them, and
simulate a new site for demonstrations.

May import: `core`, `runtime`, `evaluation`, and `training` (calibrate writes model files);
`validate` runs without torch.
"""
