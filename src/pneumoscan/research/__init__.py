"""research: exploring the data, the seed studies' experiments and the benchmarks.

May import: every layer below it (`core`, `runtime`, `evaluation`, `training`).
"""
