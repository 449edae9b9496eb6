"""Helpers for the server tests: the shipped models loaded once, real films, multipart bodies."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PNEUMONIA_FILM = EXAMPLES / "pneumonia_person1946_bacteria_4874.jpeg"
NORMAL_FILM = EXAMPLES / "normal_NORMAL2-IM-1427-0001.jpeg"
# Test artefacts (screenshots, the hostile-upload histogram) land here, outside git.
TEST_OUTPUT = REPO / "test-output"


def load_shipped_models() -> dict:
    """The shipped models, loaded through the same function the server's lifespan uses."""
    from pneumoscan.serve.app import ServeSettings, _load_models

    return _load_models(ServeSettings())


def png_bytes(pixels: np.ndarray, **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def film_as(
    path: Path, image_format: str, size: tuple[int, int] | None = None, **save_options
) -> bytes:
    """A real film re-encoded (optionally resized): PNG, JPEG, GIF, BMP, TIFF, WEBP."""
    with Image.open(path) as image:
        image = image.convert("L")
        if size is not None:
            image = image.resize(size)
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"pneumoscan-test") -> bytes:
    """A hand-built multipart body: (part headers, part content) pairs, closed properly."""
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def file_part(content: bytes, content_type: bytes = b"image/jpeg", name: bytes = b"file"):
    headers = (
        b'Content-Disposition: form-data; name="' + name + b'"; filename="film"\r\n'
        b"Content-Type: " + content_type
    )
    return headers, content


def post_to_a_broken_model(models: dict):
    """POST a real film to an app whose binary model raises RuntimeError("bug with secret
    content") in `predict` (a bug in the server's code path); the response."""
    from fastapi.testclient import TestClient

    from pneumoscan.serve.app import ServeSettings, create_app

    class Broken:
        def __getattr__(self, name):
            return getattr(models["binary"], name)

        def predict(self, *args, **kwargs):
            raise RuntimeError("bug with secret content")

    with TestClient(create_app(ServeSettings(), models={"binary": Broken()})) as client:
        files = {"file": ("film.jpeg", NORMAL_FILM.read_bytes(), "image/jpeg")}
        return client.post("/v1/predict", files=files)
