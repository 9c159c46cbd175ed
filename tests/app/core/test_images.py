"""Training and serving see the same pixels: an uploaded image folder and a PNG sent to
/predict are decoded and resized by one code path (app.core.images)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.images import image_pixels, resize_images
from app.services.image_folder_upload import read_image_folder
from app.serving.inputs import Limits, image_to_array


def png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_upload_and_prediction_see_the_same_pixels(mode: str):
    rng = np.random.default_rng(0)
    shape = (40, 30) if mode == "L" else (40, 30, 3)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    data = png(image, mode)
    channels = 1 if mode == "L" else 3
    # The upload resizes a 30x40 image to 16x16 and stores uint8 ...
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat/a.png", data)
        zf.writestr("dog/b.png", data)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        stored = read_image_folder(zf, zf.infolist(), image_size=16, max_decoded_bytes=10**7).x[0]
    # ... and /predict resizes the same file to a 16x16 model's input, in float.
    served = image_to_array(
        data,
        field="files[0]",
        filename="a.png",
        shape=(channels, 16, 16),
        limits=Limits(8, 10**7),
    )
    assert stored.shape == served.shape == (channels, 16, 16)
    # The same up to the upload's rounding to whole uint8 values.
    assert np.abs(stored.astype(np.float32) - served).max() <= 0.5 + 1e-4


def test_resize_keeps_the_array_kind_and_rounds_uint8():
    x = np.random.default_rng(1).integers(0, 256, size=(2, 1, 8, 8), dtype=np.uint8)
    up = resize_images(x, 16)
    assert isinstance(up, np.ndarray) and up.dtype == np.uint8 and up.shape == (2, 1, 16, 16)
    t = resize_images(torch.from_numpy(x).float() / 255, (4, 6))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (2, 1, 4, 6)


def test_wide_grey_pixels_map_onto_0_255():
    wide = np.array([[0, 65535], [257, 25700]], dtype=np.uint16)
    assert Image.fromarray(wide).mode == "I;16"
    pixels = image_pixels(Image.fromarray(wide), 1)
    assert pixels.tolist() == [[[0.0, 255.0], [1.0, 100.0]]]
    assert image_pixels(Image.fromarray(wide), 3).shape == (3, 2, 2)
