"""The one decode + resize path: files, PIL images and arrays give the same pixels."""

import numpy as np
import pytest
import torch
from imagefiles import write_image
from PIL import Image

from deeprank.data import UnreadableImage, array_images, image_tensor, load_image, resize


def test_load_image_shapes_modes_and_errors(tmp_path):
    rgb = write_image(tmp_path / "a.png")
    out = load_image(rgb, 32, 3)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out[:, 5, 5], torch.tensor([200, 10, 10]) / 255.0)
    gray = load_image(rgb, 16, 1)
    assert gray.shape == (1, 16, 16)
    rgba = write_image(tmp_path / "t.png", color=(0, 0, 0, 0), mode="RGBA")
    torch.testing.assert_close(load_image(rgba, 8, 3), torch.ones(3, 8, 8))  # transparency on white
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        load_image(broken, 8, 3)
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8, 3)


def test_truncated_image_is_unreadable(tmp_path):
    path = write_image(tmp_path / "full.jpg", size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage):
        load_image(path, 8, 3)


@pytest.mark.parametrize("size", [1, 7, 28, 33, 64, 225])
def test_resize_is_bilinear_antialiased_within_one_level_of_pillow(rng, size):
    pixels = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    ours = resize(torch.from_numpy(pixels).permute(2, 0, 1), size)
    assert ours.shape == (3, size, size) and ours.dtype == torch.uint8 and ours.is_contiguous()
    pillow = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR, reducing_gap=None))
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pillow.astype(int))
    assert diff.max() <= 1, diff.max()


def test_resize_keeps_images_at_size_and_rejects_other_dtypes():
    x = torch.randint(0, 256, (2, 1, 9, 9), dtype=torch.uint8)
    assert torch.equal(resize(x, 9), x)
    with pytest.raises(ValueError, match="uint8"):
        resize(x.float(), 4)
    with pytest.raises(ValueError, match="image_size"):
        resize(x, 0)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (3, 50), (1, 13)])
def test_files_pil_images_and_arrays_give_the_same_pixels(tmp_path, rng, channels, size):
    pixels = rng.integers(0, 256, (37, 30, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    from_file = image_tensor(path, size, channels)
    from_pil = image_tensor(Image.fromarray(pixels), size, channels)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    from_array = array_images(chw, size, channels)[0]
    from_floats = array_images(torch.from_numpy(chw).float() / 255, size, channels)[0]
    for other in (from_pil, from_array, from_floats):
        torch.testing.assert_close(other, from_file, rtol=0, atol=0)
    assert from_file.shape == (channels, size, size)


def test_array_images_converts_layouts_as_pillow_does(rng):
    grey = np.full((2, 14, 14), 255, np.uint8)
    out = array_images(grey, 28, 3)
    assert out.shape == (2, 3, 28, 28) and out.dtype == torch.uint8
    assert (out == 255).all()
    rgb = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    pil_grey = np.asarray(Image.fromarray(rgb.transpose(1, 2, 0)).convert("L"))
    np.testing.assert_array_equal(array_images(rgb, 28, 1)[0, 0].numpy(), pil_grey)
    with pytest.raises(ValueError, match="channels"):
        array_images(torch.rand(1, 2, 28, 28), 28, 3)
    with pytest.raises(TypeError, match="uint8 or floating"):
        array_images(np.zeros((1, 1, 4, 4), np.int32), 4, 1)
