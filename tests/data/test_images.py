"""The one decode + resize path: files, PIL images and arrays give the same pixels."""

import os
import re
import warnings

import numpy as np
import pytest
import torch
from hostile_files import (
    UPRIGHT,
    animated,
    blocks,
    eight_bit,
    encode,
    exif_jpeg,
    float_tiff,
    gradient16,
    noise,
    palette_alpha_png,
    pgm16,
    png16,
    png_header,
    png_pixel_bomb,
    stored_pixels,
    write_png,
)
from imagefiles import write_image
from PIL import Image

from deeprank.data import (
    ImageTooLarge,
    NotAnImage,
    UnreadableImage,
    array_images,
    decode_image,
    image_tensor,
    load_image,
    max_image_pixels,
    open_image,
    resize,
)
from deeprank.data.images import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV
from deeprank.errors import DeeprankError


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


# ------------------------------------------------------------------ untrusted files: the pixel limit


def test_bombs_by_header_and_by_pixels_are_unreadable_not_fatal(tmp_path):
    header, pixels = tmp_path / "header.png", tmp_path / "pixels.png"
    header.write_bytes(png_header(30000, 30000))
    pixels.write_bytes(png_pixel_bomb(20000, 20000))
    assert len(header.read_bytes()) < 100 and len(pixels.read_bytes()) < 60_000
    for path, count in ((header, 900_000_000), (pixels, 400_000_000)):
        with pytest.raises(ImageTooLarge, match=f"{count} pixels, over the limit of 50000000") as exc:
            load_image(path, 8, 1)
        assert exc.value.path == str(path) and isinstance(exc.value, UnreadableImage)


def test_our_limit_is_checked_from_the_header_before_pillows(tmp_path):
    # 64 MP: under Pillow's own guard (89 MP), over deeprank's 50 MP: refused by size, not as truncated.
    path = tmp_path / "big.png"
    path.write_bytes(png_header(8000, 8000))
    with pytest.raises(ImageTooLarge, match=r"8000x8000 = 64000000 pixels, over the limit of 50000000"):
        open_image(path, 3)
    # 100 MP under a raised limit: past Pillow's warning threshold, which must not leak out.
    path.write_bytes(png_header(10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnreadableImage) as exc:
            open_image(path, 3, max_pixels=150_000_000)
    assert not isinstance(exc.value, ImageTooLarge)  # allowed by size; then the missing data fails


def test_the_limit_comes_from_the_environment_or_the_argument(tmp_path, monkeypatch, rng):
    path = write_png(tmp_path / "a.png", noise(rng, 30, 40))  # 1200 pixels
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 50_000_000
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1199")
    assert max_image_pixels() == 1199
    with pytest.raises(ImageTooLarge, match="40x30 = 1200 pixels, over the limit of 1199"):
        image_tensor(path, 8, 3)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1200")
    assert image_tensor(path, 8, 3).shape == (3, 8, 8)  # the limit itself is allowed
    with pytest.raises(ImageTooLarge):
        image_tensor(path, 8, 3, max_pixels=1000)
    for bad in ("abc", "0", "-5", "1.5"):
        monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, bad)
        with pytest.raises(DeeprankError, match=MAX_IMAGE_PIXELS_ENV) as exc:
            image_tensor(path, 8, 3)
        assert not isinstance(exc.value, ValueError)  # a setting error stops the run; it is no skip
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(path, max_pixels=0)


def test_only_the_image_formats_parse_files(tmp_path):
    # EPS would run Ghostscript; a name of .png does not make Pillow's EPS plugin eligible.
    path = tmp_path / "drawing.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(NotAnImage, match="not an image in a supported format"):
        open_image(path, 3)
    jpeg = tmp_path / "photo.png"
    jpeg.write_bytes(encode(Image.new("RGB", (9, 7), (10, 200, 30)), "JPEG"))
    assert open_image(jpeg, 3).size == (9, 7)  # content decides, not the name


def test_special_files_and_missing_files_are_unreadable(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block for ever
    with pytest.raises(UnreadableImage, match="not a regular file"):
        open_image(fifo, 1)
    with pytest.raises(UnreadableImage, match="file not found"):
        open_image(tmp_path / "nope.png", 1)
    (tmp_path / "loop.png").symlink_to("loop.png")
    with pytest.raises(UnreadableImage, match="loop.png"):
        open_image(tmp_path / "loop.png", 1)


# ------------------------------------------------------------------ high bit depths


def _grey_row(image: Image.Image, channels: int) -> np.ndarray:
    pixels = np.asarray(open_image(image, channels))
    return pixels if channels == 1 else pixels[..., 0]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_high_bit_depth_modes_scale_to_a_full_8_bit_gradient(mode, channels):
    values = gradient16(256, 3)
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    elif mode == "F":
        image = Image.fromarray((values / 65535.0).astype(np.float32))
    else:
        order = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (256, 3), values.astype(order).tobytes())
    assert image.mode == mode
    out = _grey_row(image, channels)
    np.testing.assert_array_equal(out, eight_bit(values))
    assert out[0, 0] == 0 and out[0, -1] == 255 and (np.diff(out[0].astype(int)) >= 0).all()


def _tiff16_big_endian(values: np.ndarray) -> bytes:
    return encode(Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes()), "TIFF")


@pytest.mark.parametrize(
    ("name", "data", "mode"),
    [
        ("sixteen.png", png16, "I;16"),
        ("sixteen.pgm", pgm16, "I"),
        ("big-endian.tif", _tiff16_big_endian, "I;16B"),
        ("float.tif", lambda v: float_tiff(v / 65535.0), "F"),
    ],
)
def test_high_bit_depth_files_scale_to_a_full_8_bit_gradient(tmp_path, name, data, mode):
    values = gradient16(256, 4)
    path = tmp_path / name
    path.write_bytes(data(values))
    with Image.open(path) as raw:
        assert raw.mode == mode
    np.testing.assert_array_equal(np.asarray(open_image(path, 1)), eight_bit(values))
    pillow_alone = np.asarray(Image.open(path).convert("L"))
    assert not np.array_equal(pillow_alone, eight_bit(values))  # what the files came out as before


def test_integer_and_float_images_are_clipped_and_nan_is_unreadable(tmp_path):
    ints = Image.fromarray(np.array([[-5, 0, 65535, 70000, 2**31 - 1]], np.int32))
    assert np.asarray(open_image(ints, 1)).tolist() == [[0, 0, 255, 255, 255]]
    floats = np.array([[-0.5, 0.0, 0.5, 1.0, 7.0]], np.float32)
    assert np.asarray(open_image(Image.fromarray(floats), 1)).tolist() == [[0, 0, 128, 255, 255]]
    floats[0, 2] = np.nan
    path = tmp_path / "nan.tif"
    path.write_bytes(float_tiff(floats))
    with pytest.raises(UnreadableImage, match="NaN"):
        open_image(path, 1)


# ------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_jpegs_upright(tmp_path, orientation):
    data = exif_jpeg(blocks(), orientation)
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(data)
    upright = UPRIGHT[orientation](stored_pixels(data))
    from_file = np.asarray(open_image(path, 3))
    np.testing.assert_array_equal(from_file, upright)
    with Image.open(path) as opened:  # a PIL image the caller opened is turned the same way
        np.testing.assert_array_equal(np.asarray(open_image(opened, 3)), upright)
    np.testing.assert_array_equal(np.asarray(open_image(open_image(path, 3), 3)), upright)  # once only
    if orientation in (5, 6, 7, 8):
        assert from_file.shape[:2] == blocks().shape[1::-1]


def test_a_broken_exif_block_leaves_the_pixels_usable(tmp_path):
    path = tmp_path / "broken-exif.jpg"
    Image.new("RGB", (8, 6), (10, 200, 30)).save(
        path, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's own "Corrupt EXIF data"
        assert open_image(path, 3).size == (8, 6)


# ------------------------------------------------------------------ other modes and animations


def test_cmyk_palette_alpha_and_animations_decode_as_viewers_show_them(tmp_path, rng):
    data, on_white = palette_alpha_png(rng)
    path = tmp_path / "p.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(np.asarray(open_image(path, 3)), on_white)
    frames = [blocks(16, 16), 255 - blocks(16, 16)]
    for name, fmt in (("a.gif", "GIF"), ("a.png", "PNG")):
        (tmp_path / name).write_bytes(animated(frames, fmt))
        first = np.asarray(open_image(tmp_path / name, 3))
        assert np.abs(first.astype(int) - frames[0]).max() <= 8  # the first frame (GIF: its palette)
    cmyk = tmp_path / "c.jpg"
    cmyk.write_bytes(encode(Image.fromarray(noise(rng)).convert("CMYK"), "JPEG"))
    np.testing.assert_array_equal(np.asarray(open_image(cmyk, 3)), stored_pixels(cmyk.read_bytes()))


def test_a_mode_pillow_cannot_convert_is_unreadable():
    with pytest.raises(UnreadableImage, match="conversion from LAB"):
        open_image(Image.new("LAB", (2, 2)), 1)


# ------------------------------------------------------------------ array layouts


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_uint8_arrays_are_one_image_like_the_pil_image(rng, channels):
    pixels = noise(rng, 37, 30)
    expected = image_tensor(Image.fromarray(pixels), 16, channels)
    torch.testing.assert_close(array_images(pixels, 16, channels), expected[None], rtol=0, atol=0)
    batch = np.stack([pixels, pixels[::-1].copy()])
    out = array_images(batch, 16, channels)  # [N, H, W, C]
    assert out.shape == (2, channels, 16, 16)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=0)
    grey = noise(rng, 20, 21, channels=1)
    torch.testing.assert_close(
        array_images(grey[..., None], 8, channels)[0], image_tensor(Image.fromarray(grey), 8, channels)
    )
    rgba = rng.integers(0, 256, (12, 14, 4), dtype=np.uint8)
    torch.testing.assert_close(
        array_images(rgba, 8, channels)[0], image_tensor(Image.fromarray(rgba, "RGBA"), 8, channels)
    )


@pytest.mark.parametrize(
    ("shape", "dtype", "fragment"),
    [
        ((3, 10, 3), np.uint8, "fit both channels first and channels last"),
        ((2, 1, 10, 4), np.uint8, "fit both channels first and channels last"),
        ((10, 12, 3), np.float32, "fit both [N, H, W] grey and (float) channels last"),
        ((2, 10, 12, 3), np.float32, "no channel axis"),
        ((2, 5, 10, 12), np.uint8, "no channel axis"),
        ((10, 12), np.uint8, "are not images"),
        ((1, 2, 3, 4, 5), np.uint8, "are not images"),
    ],
)
def test_ambiguous_or_unknown_layouts_are_refused_with_the_accepted_ones(shape, dtype, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)) as exc:
        array_images(np.zeros(shape, dtype), 8, 3)
    assert "accepted layouts" in str(exc.value) and str(shape) in str(exc.value)


def test_channels_first_and_grey_stacks_keep_their_meaning(rng):
    chw = noise(rng, 9, 11).transpose(2, 0, 1).copy()
    assert array_images(chw, 8, 3).shape == (1, 3, 8, 8)
    assert array_images(np.zeros((5, 9, 11), np.uint8), 8, 1).shape == (5, 1, 8, 8)  # [N, H, W] grey
    assert array_images(torch.rand(1, 1, 4, 4), 4, 1).shape == (1, 1, 4, 4)  # float: channels first only
    with pytest.raises(ValueError, match="NaN"):
        array_images(torch.full((1, 3, 4, 4), float("nan")), 4, 3)
