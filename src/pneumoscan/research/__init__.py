"""research: exploring the data, the seed studies' experiments and the benchmarks.

Owns `eda`, the seed studies (`experiments`), prediction and gate benchmarks (`bench`) and the
training benchmark (`bench_train`).

May import: `core`, `runtime`, `evaluation` and `training`.
"""
