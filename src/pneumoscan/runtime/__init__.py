"""runtime: prediction on ONNX Runtime, torch-free.

The exported model and its metadata (`model`), the batched predict path and its results
(`predict`), heatmaps (`heatmap`), CSV and JSON prediction files (`outputs`) and sharded runs
(`shards`). The CLI's `predict`, the Python API and the server all run these functions.

May import: `core`, onnxruntime, and what `core` may. Never torch.
"""
