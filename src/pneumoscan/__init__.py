"""pneumoscan: pneumonia detection in pediatric chest X-rays. Not a diagnostic device.

`pneumoscan.load_model` is imported on first use, so `import pneumoscan` stays light (no numpy,
no ONNX Runtime, never torch) until you ask for a model.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from pneumoscan.api import load_model

        return load_model
    raise AttributeError(f"module 'pneumoscan' has no attribute {name!r}")
