"""training: networks, the model file, fitting, the gate, export and shipping; torch.

Owns the network registry (`networks`), the self-describing model file (`model_file`), image
loading and augmentation (`loaders`), the LightningModule (`lit`), `fit` and cross-validation
(`fit`), the out-of-distribution gate (`gate`), ONNX export (`export`), evaluation of a model
file (`evaluate`) and turning a run into shipped files with a card (`ship`).

May import: `core`, `runtime`, `evaluation`, torch, torchvision, Lightning and onnx (the
[train] extra).
"""
