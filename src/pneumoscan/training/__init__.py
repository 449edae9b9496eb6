"""training: networks, the model file, training, the gate, export, evaluation of model files and
shipping.

May import: `core`, `runtime`, `evaluation`, torch, torchvision, Lightning and onnx (the [train]
extra).
"""
