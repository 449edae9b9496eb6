"""runtime: prediction on ONNX Runtime, torch-free: what the CLI, API and server all run.

Owns the exported model and its metadata (`model`), the batched predict path, its results and
the outcome summary (`predict`), heatmaps and the PNG writer (`heatmap`), CSV and JSON
prediction files (`outputs`) and sharded runs (`shards`).

May import: `core`, onnxruntime and the lean install's packages. Never torch.
"""
