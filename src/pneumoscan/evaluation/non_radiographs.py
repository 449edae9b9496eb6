"""Inputs that are not chest radiographs, for measuring the out-of-distribution gate.

Three groups, named by what the gate's design has seen of them (`non_radiograph_groups`):
scikit-image's sample photos and generated images (the benchmark the design was chosen on), new
random draws of the generated kinds, and kinds added after the design was fixed. `bench-ood`
reports the gate on them, and `calibrate --refit-gate` re-measures them for a site's widened
threshold. Every image goes through the same reader as a user's file (`to_unit_gray`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from pneumoscan.core.images import read_image

SKIMAGE_PHOTOS = (
    "astronaut",
    "binary_blobs",
    "brick",
    "camera",
    "cat",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "text",
    "stereo_motorcycle",
)


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled sample images (those that need no download)."""
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        elif image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(np.ptp(image), 1e-9)).astype(np.uint8)
        photos.append((f"skimage:{name}", image))
    return photos


def generated_non_radiographs(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Blank, noise, gradients, patterns, text documents, screenshots and shapes, as uint8 images."""
    rng = np.random.default_rng(seed)
    height, width = 480, 640
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    images: list[tuple[str, np.ndarray]] = [
        ("blank:black", np.zeros((height, width), np.uint8)),
        ("blank:white", np.full((height, width), 255, np.uint8)),
        ("blank:gray", np.full((height, width), 128, np.uint8)),
        ("gradient:horizontal", np.broadcast_to(x * 255, (height, width)).astype(np.uint8)),
        ("gradient:vertical", np.broadcast_to(y * 255, (height, width)).astype(np.uint8)),
        ("gradient:radial", (255 * np.hypot(x - 0.5, y - 0.5) / 0.71).astype(np.uint8)),
    ]
    for index in range(4):
        images.append(
            (f"noise:uniform{index}", rng.integers(0, 256, (height, width), dtype=np.uint8))
        )
        noise = rng.normal(128, 40, (height, width))
        images.append((f"noise:gaussian{index}", np.clip(noise, 0, 255).astype(np.uint8)))
    for period in (8, 32, 64):
        stripes = 127.5 + 127.5 * np.sin(
            2 * np.pi * (x * width / period + y * height / (2 * period))
        )
        images.append((f"pattern:waves{period}", stripes.astype(np.uint8)))
        tiles = (
            (np.arange(width)[None, :] // period + np.arange(height)[:, None] // period) % 2
        ) * 255
        images.append((f"pattern:checker{period}", tiles.astype(np.uint8)))
    words = (
        "patient report summary findings lorem ipsum dolor sit amet invoice total page "
        "section table figure results method the and of to in"
    ).split()
    for index in range(6):
        page = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(page)
        for line in range(28):
            text = " ".join(rng.choice(words, size=rng.integers(4, 12)))
            draw.text((20 + 10 * (index % 3), 12 + line * 16), text, fill=int(rng.integers(0, 60)))
        images.append((f"document:{index}", np.asarray(page)))
    for index in range(6):
        screen = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(screen)
        draw.rectangle((0, 0, width, 28), fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        for _ in range(8):
            left, top = int(rng.integers(0, width - 120)), int(rng.integers(40, height - 60))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle(
                (left, top, left + int(rng.integers(60, 200)), top + int(rng.integers(20, 120))),
                fill=colour,
            )
            draw.text((left + 4, top + 4), " ".join(rng.choice(words, size=3)), fill=(0, 0, 0))
        images.append((f"screenshot:{index}", np.asarray(screen)))
    for index in range(6):
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(12):
            left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
            size = int(rng.integers(20, 160))
            draw.ellipse(
                (left, top, left + size, top + size),
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            )
        images.append((f"shapes:{index}", np.asarray(canvas)))
    return images


def fresh_non_radiographs(seed: int = 100) -> list[tuple[str, np.ndarray]]:
    """Kinds of image the gate's design never saw (it was chosen on `skimage_photos`,
    `generated_non_radiographs()` and two more draws of it): charts, ultrasound sectors, CT-like
    slices, ECG strips, cloud-like 1/f noise and colour forms. A check that the gate generalises
    beyond the inputs it was designed on."""
    rng = np.random.default_rng(seed)
    images = [(f"plot:{index}", _chart(rng, index)) for index in range(6)]
    images += [(f"ultrasound:{index}", _ultrasound(rng)) for index in range(4)]
    images += [(f"ct-slice:{index}", _ct_slice(rng)) for index in range(4)]
    images += [(f"ecg:{index}", _ecg(rng)) for index in range(3)]
    images += [(f"clouds:{index}", _clouds(rng)) for index in range(4)]
    images += [(f"form:{index}", _form(rng)) for index in range(3)]
    return images


def _chart(rng: np.random.Generator, index: int) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    x = np.arange(20)
    kind = index % 3
    if kind == 0:
        axes.plot(x, rng.normal(size=(20, 3)).cumsum(axis=0))
    elif kind == 1:
        axes.bar(x, rng.uniform(1, 10, 20))
    else:
        axes.scatter(rng.normal(size=200), rng.normal(size=200), s=8)
    axes.set_title("results by group")
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return image


def _ultrasound(rng: np.random.Generator) -> np.ndarray:
    """A sector of speckle on black, as a B-mode ultrasound frame."""
    height, width = 480, 640
    y, x = np.mgrid[0:height, 0:width]
    radius = np.hypot(x - width / 2, y + 40)
    angle = np.arctan2(x - width / 2, y + 40)
    sector = (radius > 80) & (radius < 500) & (np.abs(angle) < 0.6)
    speckle = rng.rayleigh(0.35, (height, width)) * (0.6 + 0.4 * np.sin(radius / 23.0))
    return (255 * np.clip(speckle * sector, 0, 1)).astype(np.uint8)


def _ct_slice(rng: np.random.Generator) -> np.ndarray:
    """An axial body section: an ellipse of soft tissue, two dark lungs, a bright spine, noise."""
    size = 512
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    image = np.where((x / 0.42) ** 2 + (y / 0.32) ** 2 < 1, 0.55, 0.0)
    for side in (-1, 1):
        lung = ((x - side * 0.17) / 0.13) ** 2 + ((y + 0.02) / 0.2) ** 2 < 1
        image = np.where(lung, 0.08, image)
    image = np.where((x / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2 < 1, 0.95, image)
    image = image + rng.normal(0, 0.04, image.shape)
    return (255 * np.clip(image, 0, 1)).astype(np.uint8)


def _ecg(rng: np.random.Generator) -> np.ndarray:
    height, width = 480, 640
    page = Image.new("RGB", (width, height), (255, 240, 240))
    draw = ImageDraw.Draw(page)
    for step in range(0, width, 16):
        draw.line((step, 0, step, height), fill=(240, 170, 170), width=2 if step % 80 == 0 else 1)
    for step in range(0, height, 16):
        draw.line((0, step, width, step), fill=(240, 170, 170), width=2 if step % 80 == 0 else 1)
    beat = np.zeros(120)
    beat[50:56] = [10, 40, -90, 30, 8, 0]
    beat[85:100] = 12 * np.sin(np.linspace(0, np.pi, 15))
    trace = np.tile(beat, width // 120 + 1)[:width] + rng.normal(0, 1.5, width)
    for row in (120, 240, 360):
        points = [(i, row - float(v)) for i, v in enumerate(trace)]
        draw.line(points, fill=(0, 0, 0), width=2)
    return np.asarray(page)


def _clouds(rng: np.random.Generator) -> np.ndarray:
    """1/f noise: smooth, natural-looking grey clouds."""
    size = 512
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    spectrum = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    field = np.real(np.fft.ifft2(spectrum / np.maximum(frequency, 1.0 / size) ** 1.5))
    field = (field - field.min()) / np.ptp(field)
    return (255 * field).astype(np.uint8)


def _form(rng: np.random.Generator) -> np.ndarray:
    """A colour form: a header band, boxed fields with labels, a table."""
    width, height = 640, 480
    page = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, width, 50), fill=tuple(int(v) for v in rng.integers(0, 160, 3)))
    draw.text((20, 18), "REQUEST FORM", fill=(255, 255, 255))
    for row in range(6):
        top = 70 + row * 40
        draw.text((20, top + 8), f"field {row + 1}", fill=(0, 0, 0))
        draw.rectangle((140, top, 600, top + 30), outline=(0, 0, 0))
    for row in range(5):
        for column in range(4):
            left, top = 20 + column * 150, 330 + row * 28
            draw.rectangle((left, top, left + 150, top + 28), outline=(60, 60, 60))
            draw.text((left + 6, top + 8), str(int(rng.integers(0, 1000))), fill=(0, 0, 0))
    return np.asarray(page)


def to_unit_gray(image: np.ndarray) -> np.ndarray:
    """Through the same reader as a user's file: encode as PNG, decode with images.read_image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return read_image(buffer.getvalue(), name="sample.png")


def non_radiograph_groups() -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The gate's benchmark inputs in four groups, by what the gate's design has seen of them."""
    try:
        photos = skimage_photos()
    except ImportError:
        photos = []
    return [
        (
            "benchmark (the gate's design was chosen on these)",
            photos + generated_non_radiographs(0),
        ),
        (
            "new draws of the generated kinds (looked at while choosing the design)",
            generated_non_radiographs(1) + generated_non_radiographs(2),
        ),
        (
            "kinds added while designing (two 1/f clouds passing the content and texture parts "
            "led to the layout part)",
            fresh_non_radiographs(),
        ),
        ("kinds made after the design was fixed, measured once", unseen_non_radiographs()),
    ]


def unseen_non_radiographs(seed: int = 200) -> list[tuple[str, np.ndarray]]:
    """Kinds generated after the gate's design was fixed: QR-like codes, contour maps, line
    drawings, MRI-like head slices and posters."""
    rng = np.random.default_rng(seed)
    images = [(f"qr:{index}", _qr(rng)) for index in range(3)]
    images += [(f"contours:{index}", _contours(rng)) for index in range(3)]
    images += [(f"drawing:{index}", _drawing(rng)) for index in range(3)]
    images += [(f"mri-head:{index}", _mri_head(rng)) for index in range(3)]
    images += [(f"poster:{index}", _poster(rng)) for index in range(3)]
    return images


def _qr(rng: np.random.Generator) -> np.ndarray:
    cells = rng.integers(0, 2, (29, 29)).astype(np.uint8)
    for top, left in ((0, 0), (0, 22), (22, 0)):
        cells[top : top + 7, left : left + 7] = 1
        cells[top + 1 : top + 6, left + 1 : left + 6] = 0
        cells[top + 2 : top + 5, left + 2 : left + 5] = 1
    code = np.kron(1 - cells, np.ones((14, 14), np.uint8)) * 255
    return np.pad(code, 40, constant_values=255)


def _contours(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:480, 0:640] / 100.0
    height = sum(
        rng.uniform(0.5, 1.5)
        * np.sin(rng.uniform(0.3, 1.2) * x + rng.uniform(0, 6))
        * np.cos(rng.uniform(0.3, 1.2) * y + rng.uniform(0, 6))
        for _ in range(4)
    )
    lines = np.abs(np.sin(height * 6)) < 0.12
    return np.where(lines, 60, 235).astype(np.uint8)


def _drawing(rng: np.random.Generator) -> np.ndarray:
    page = Image.new("L", (640, 480), 255)
    draw = ImageDraw.Draw(page)
    for _ in range(10):
        points = [(int(rng.integers(0, 640)), int(rng.integers(0, 480))) for _ in range(4)]
        draw.polygon(points, outline=0)
    return np.asarray(page)


def _mri_head(rng: np.random.Generator) -> np.ndarray:
    size = 384
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    radius = (x / 0.36) ** 2 + (y / 0.44) ** 2
    image = np.where(radius < 1, 0.85, 0.0)
    image = np.where(radius < 0.85, 0.45 + 0.1 * np.sin(40 * np.hypot(x, y)), image)
    for side in (-1, 1):
        image = np.where(((x - side * 0.05) / 0.04) ** 2 + (y / 0.12) ** 2 < 1, 0.1, image)
    image = image + rng.normal(0, 0.03, image.shape)
    return (255 * np.clip(image, 0, 1)).astype(np.uint8)


def _poster(rng: np.random.Generator) -> np.ndarray:
    page = Image.new("RGB", (480, 640), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(page)
    for line in range(8):
        draw.text((30, 40 + 70 * line), "OPEN DAY " * 3, fill=(255, 255, 255))
    big = Image.new("L", (60, 12), 0)
    ImageDraw.Draw(big).text((2, 0), "SALE", fill=255)
    page.paste((0, 0, 0), (40, 250, 440, 330), big.resize((400, 80)))
    return np.asarray(page)
