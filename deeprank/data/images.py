"""Decoding and resizing: the one path from any image input to the model's input pixels.

Every input kind (image files, PIL images, numpy/torch image arrays, the bundled Fashion-MNIST arrays,
server uploads) ends the same way, so the same picture embeds to the same vector whatever form it
came in:

1. decode to a PIL image (:func:`decode_image` for files and bytes, then :func:`open_image`) or take
   the array (:func:`array_images`);
2. bring it upright and to 8 bits (rules below), composite transparency on white, and convert to the
   model's channels as Pillow converts grey <-> RGB (ITU-R 601 luma for RGB -> grey);
3. :func:`resize` to the square model input: bilinear with antialiasing (torch's uint8 kernel; the
   whole image, no centre crop: a search by example must see all of it).

Untrusted files (:func:`decode_image`):

* **pixel limit**: an image whose header declares more than :func:`max_image_pixels` pixels
  (``DEEPRANK_MAX_IMAGE_PIXELS``, default 50 000 000, the server's limit too) is refused before any
  pixel is decoded, and so is Pillow's own ``DecompressionBombError``: a 48 KB PNG of 20000 x 20000
  pixels or a 45-byte header claiming 30000 x 30000 is one more unreadable file (:class:`ImageTooLarge`),
  never an abort or a 400 MB allocation. Pillow's guard (twice ``PIL.Image.MAX_IMAGE_PIXELS``) still
  applies above ours: raise both to decode larger images. Memory: decoding one image holds at most a
  few copies of it at 4 bytes a pixel (about 0.6 GB for an RGBA image at the 50 MP limit).
* **formats**: only the Pillow plugins of :data:`IMAGE_FORMATS` parse files (the formats of
  :data:`deeprank.data.folders.IMAGE_EXTENSIONS`); others, EPS (which runs Ghostscript) above all,
  are attack surface an image search does not need.
* **EXIF orientation**: applied (``ImageOps.exif_transpose``), so a phone photo indexes upright; a
  broken EXIF block is ignored (the pixels are still good).
* **animations** (GIF, APNG, multi-page TIFF): the first frame.

High bit depths to 8 bits (Pillow's own conversion clips them, so a 16-bit PNG came out white):

* ``I;16`` / ``I;16B`` / ``I;16L`` (16-bit grey): ``round(v * 255 / 65535)``, the PNG specification's
  rule for reducing sample depth, so 0..65535 maps onto 0..255 with 65535 white.
* ``I`` (32-bit integer): the same 16-bit scale, values clipped to 0..65535. ``I`` is how Pillow
  decodes 16-bit PGM/PPM files (maximum values over 255, rescaled by Pillow to 0..65535) and what
  ``convert("I")`` of a 16-bit image gives; a 32-bit integer TIFF carries no white level to scale by,
  so the one scale Pillow itself uses for ``I`` images keeps the common case exact.
* ``F`` (32-bit float, e.g. a float TIFF): 0.0 black to 1.0 white, clipped, rounded to 8 bits: the
  rule of float image arrays below, so a float TIFF and the float array of the same picture give the
  same pixels. NaN pixels make the file unreadable (there is no right grey for them).
* 16-bit RGB(A) files: Pillow already decodes them to 8-bit ``RGB``/``RGBA``.

Image arrays (:func:`array_images`): channels-first ``[N, C, H, W]`` / ``[C, H, W]`` with ``C`` 1 or 3,
grey ``[N, H, W]``, and channels-last ``uint8`` ``[N, H, W, C]`` / ``[H, W, C]`` with ``C`` 1, 3 or 4
(what ``numpy.asarray(pil_image)`` gives; 4 = RGBA, composited on white like files). ``uint8``, or
floats in ``[0, 1]`` (clipped, rounded to 8 bits; NaN refused). A shape that fits two layouts is
refused with the list of accepted layouts rather than guessed.

Unreadable files raise :class:`UnreadableImage` (a ``ValueError`` naming the file); long runs count
them in :class:`SkippedImages`.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DeeprankError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_FORMATS",
    "MAX_IMAGE_PIXELS_ENV",
    "ImageTooLarge",
    "NotAnImage",
    "SkippedImages",
    "UnreadableImage",
    "array_images",
    "decode_image",
    "image_tensor",
    "load_image",
    "max_image_pixels",
    "open_image",
    "resize",
    "resize_pil",
]

MAX_IMAGE_PIXELS_ENV = "DEEPRANK_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
#: The Pillow plugins allowed to parse files: the formats of ``IMAGE_EXTENSIONS`` (PPM reads PGM/PBM).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class UnreadableImage(ValueError):
    """A file that is missing, truncated or not an image; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: not a readable image ({reason})")
        self.path = str(path)
        self.reason = reason


class NotAnImage(UnreadableImage):
    """Data that no accepted Pillow plugin recognises as an image (text, an unsupported format)."""


class ImageTooLarge(UnreadableImage):
    """An image with more pixels than the limit (a decompression bomb, or simply too large)."""

    def __init__(
        self, path: str | Path, pixels: int | None, limit: int, size: tuple[int, int] | None
    ) -> None:
        what = f"{size[0]}x{size[1]} = {pixels} pixels" if size else f"{pixels or 'more'} pixels"
        super().__init__(path, f"{what}, over the limit of {limit} pixels ({MAX_IMAGE_PIXELS_ENV})")
        self.pixels = pixels
        self.limit = limit


class SkippedImages:
    """Counts unreadable images met during a long run and warns once per file (never raises).

    ``skipped.count`` is the number of distinct files skipped, ``skipped.paths`` their names.
    """

    def __init__(self, warn: bool = True) -> None:
        self.paths: set[str] = set()
        self.warn = warn

    @property
    def count(self) -> int:
        return len(self.paths)

    def add(self, error: UnreadableImage) -> None:
        if error.path in self.paths:
            return
        self.paths.add(error.path)
        if self.warn:
            warnings.warn(f"skipping {error}", RuntimeWarning, stacklevel=3)

    def __contains__(self, path: object) -> bool:
        return str(path) in self.paths


def max_image_pixels() -> int:
    """The pixel limit of decoded images: ``DEEPRANK_MAX_IMAGE_PIXELS`` if set, else 50 000 000.

    Read at each call, so a change of the variable applies to the next image. A value that is not a
    positive integer raises :class:`deeprank.errors.DeeprankError` (not a skip: every file would be).
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise DeeprankError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}")
    return value


def _check_limit(max_pixels: int | None) -> int:
    if max_pixels is None:
        return max_image_pixels()
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    return max_pixels


# Pillow warns (DecompressionBombWarning) for images between its limit and twice it while parsing the
# header; our own limit is checked right after, so the warning is noise. ``catch_warnings`` changes
# process-wide state, hence the lock, held only while the header is parsed (not while decoding).
_HEADER_LOCK = threading.Lock()


def _open_header(fp: str | Path | IO[bytes], formats: tuple[str, ...]) -> Image.Image:
    with _HEADER_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp, formats=list(formats))


def decode_image(
    source: str | Path | IO[bytes],
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    formats: tuple[str, ...] = IMAGE_FORMATS,
) -> Image.Image:
    """Decode an image file (a path or a binary file object) fully: its first frame, in its own mode.

    The size its header declares is checked against ``max_pixels`` (default :func:`max_image_pixels`)
    before any pixel is decoded. Raises :class:`ImageTooLarge`, :class:`NotAnImage` or
    :class:`UnreadableImage` (missing, unreadable, truncated, corrupt), each naming ``name`` (default:
    the path). The image keeps a path's file open (animated images read it again to convert): use it
    in a ``with`` block.
    """
    limit = _check_limit(max_pixels)
    label = name if name is not None else str(source) if isinstance(source, (str, Path)) else "<image data>"
    if isinstance(source, (str, Path)):
        _check_regular_file(source, label)  # a FIFO or a device would block or never end
    try:
        image = _open_header(source, formats)
    except FileNotFoundError:
        raise UnreadableImage(label, "file not found") from None
    except UnidentifiedImageError:
        raise NotAnImage(label, f"not an image in a supported format ({', '.join(formats)})") from None
    except Image.DecompressionBombError as exc:  # over Pillow's own guard: refused before ours is asked
        raise ImageTooLarge(label, _bomb_pixels(exc), limit, None) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(label, _reason(exc)) from None
    try:
        width, height = image.size
        if width < 1 or height < 1:
            raise UnreadableImage(label, f"empty size {width}x{height}")
        if width * height > limit:
            raise ImageTooLarge(label, width * height, limit, (width, height))
        image.load()  # decode now: truncated files fail here, not later in a batch
    except UnreadableImage:
        image.close()
        raise
    except Image.DecompressionBombError as exc:  # a GIF frame larger than its header said
        image.close()
        raise ImageTooLarge(label, _bomb_pixels(exc), limit, None) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        image.close()
        raise UnreadableImage(label, _reason(exc)) from None
    return image


def _check_regular_file(path: str | Path, label: str) -> None:
    try:
        is_file = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        raise UnreadableImage(label, "file not found") from None
    except OSError as exc:  # a symlink loop, a permission denied on the way
        raise UnreadableImage(label, _reason(exc)) from None
    if not is_file:
        raise UnreadableImage(label, "not a regular file")


def _bomb_pixels(exc: Exception) -> int | None:
    """The pixel count in Pillow's ``DecompressionBombError`` message ("Image size (N pixels) ...")."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_channels(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (a broken EXIF block counts as no tag)."""
    try:
        orientation = image.getexif().get(0x0112, 1)  # 0x0112: Orientation
    except Exception:  # Pillow's EXIF parser raises many types on malformed data; the pixels are fine
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images as 8-bit ``L`` by the module docstring's rules."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        values = (values.clip(0, 65535) if mode == "I" else values).astype(np.uint32)
        values *= 255  # in place, 4 bytes a pixel: at most 65535 * 255 + 32767 < 2**32
        values += 32767
        values //= 65535  # round(v * 255 / 65535), no ties: v / 257 is never an odd half
        return Image.fromarray(values.astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if np.isnan(values).any():
            raise ValueError("float image holds NaN pixels")
        return Image.fromarray(_as_uint8(torch.from_numpy(values.copy())).numpy(), "L")
    return image


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _on_white(image: Image.Image) -> Image.Image:
    """Transparency (an alpha channel, or a palette/colour key) composited on white, as viewers show it."""
    if image.mode not in _ALPHA_MODES and not (image.mode == "P" or "transparency" in image.info):
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def open_image(
    source: str | Path | Image.Image, channels: int, *, max_pixels: int | None = None
) -> Image.Image:
    """Decode ``source`` (a file, by :func:`decode_image`, or a PIL image) as ``"L"`` (``channels=1``) or
    ``"RGB"`` (3): upright, 8 bits, transparency on white (module docstring).

    ``max_pixels`` applies to files (default :func:`max_image_pixels`). Raises
    :class:`UnreadableImage` (a ``ValueError``) naming the file when it cannot be decoded.
    """
    mode = _check_channels(channels)
    if isinstance(source, Image.Image):
        return _model_mode(source, mode, "<PIL image>")
    with decode_image(source, max_pixels=max_pixels) as image:
        return _model_mode(image, mode, str(source))


def _model_mode(image: Image.Image, mode: str, label: str) -> Image.Image:
    try:
        return _on_white(_eight_bit(_upright(image))).convert(mode)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # e.g. LAB, or a frame failing to re-read
        raise UnreadableImage(label, _reason(exc)) from None


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize ``uint8 [N, C, H, W]`` (or ``[C, H, W]``) to ``image_size`` square; the one resize of deeprank.

    Bilinear with antialiasing, computed by torch's uint8 kernel in channels-last order (about 10x
    faster than Pillow on a 12 MP photo, and within one grey level of ``Image.resize(BILINEAR)``).
    Returns a contiguous ``uint8`` tensor of the same rank; images already at the size are returned as is.
    """
    if images.dtype != torch.uint8 or images.dim() not in (3, 4):
        raise ValueError(
            f"images must be uint8 [N, C, H, W] or [C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if images.shape[-2:] == (image_size, image_size):
        return images.contiguous()
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    out = F.interpolate(
        batch.contiguous(memory_format=torch.channels_last),
        size=(image_size, image_size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    ).contiguous()
    return out if images.dim() == 4 else out[0]


def _pil_pixels(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # a channels-last view: what resize wants


def resize_pil(image: Image.Image, image_size: int) -> Image.Image:
    """A PIL image (mode ``L`` or ``RGB``) resized by :func:`resize`, as a PIL image (for augmentations)."""
    pixels = resize(_pil_pixels(image), image_size).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, image.mode)


def image_tensor(
    source: str | Path | Image.Image, image_size: int, channels: int, *, max_pixels: int | None = None
) -> torch.Tensor:
    """One image file or PIL image as the model's pixels: ``uint8 [channels, image_size, image_size]``.

    Raises :class:`UnreadableImage` when ``source`` is not a readable image (``max_pixels``: see
    :func:`open_image`).
    """
    return resize(_pil_pixels(open_image(source, channels, max_pixels=max_pixels)), image_size)


def load_image(
    source: str | Path | Image.Image, image_size: int, channels: int, *, max_pixels: int | None = None
) -> torch.Tensor:
    """Like :func:`image_tensor`, as ``float32`` in ``[0, 1]`` (what the models take)."""
    return image_tensor(source, image_size, channels, max_pixels=max_pixels).float().div_(255.0)


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError("images hold NaN values; expected floats in [0, 1]")
    return (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` with C in (1, 3) converted as Pillow converts ``L`` <-> ``RGB``."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        # Pillow's RGB -> L: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2 luma).
        weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)
        luma = ((x.to(torch.int32) * weights).sum(dim=1, keepdim=True) + 0x8000) >> 16
        return luma.to(torch.uint8)
    raise ValueError(f"images have {have} channels, the model expects {channels}")


ARRAY_LAYOUTS = (
    "[N, C, H, W] or [C, H, W] with C 1 or 3 (uint8, or floats in [0, 1]); [N, H, W] grey; "
    "uint8 [N, H, W, C] or [H, W, C] with C 1, 3 or 4 (channels last, as numpy.asarray(pil_image))"
)
_FIRST, _LAST = (1, 3), (1, 3, 4)


def _layout_error(shape: tuple[int, ...], dtype: torch.dtype, why: str) -> ValueError:
    return ValueError(f"images of shape {shape} ({dtype}) {why}; accepted layouts: {ARRAY_LAYOUTS}")


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` of an array in one of :data:`ARRAY_LAYOUTS`; a shape fitting two is an error."""
    shape = tuple(x.shape)
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
    if x.dim() not in (3, 4):
        raise _layout_error(shape, x.dtype, "are not images")
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    first, last = batched.shape[1] in _FIRST, batched.shape[-1] in _LAST
    if first and last and x.dtype == torch.uint8:  # channels last is a uint8 layout only
        raise _layout_error(shape, x.dtype, "fit both channels first and channels last")
    if first:
        return batched
    if last and x.dtype == torch.uint8:
        return batched.permute(0, 3, 1, 2)
    if last and x.dim() == 3:  # [N, H, W] grey of width 1/3/4, or float channels last: no way to tell
        raise _layout_error(shape, x.dtype, "fit both [N, H, W] grey and (float) channels last")
    if x.dim() == 3:
        return x.unsqueeze(1)  # [N, H, W] grey
    raise _layout_error(shape, x.dtype, "have no channel axis of 1 or 3 (nor uint8 1, 3 or 4 last)")


def _rgba_on_white(x: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 4, H, W]`` RGBA composited on white exactly as files are (Pillow's alpha_composite)."""
    out = [
        torch.from_numpy(np.array(_on_white(Image.fromarray(image.permute(1, 2, 0).numpy(), "RGBA"))))
        for image in x
    ]
    return torch.stack(out).permute(0, 3, 1, 2)[:, :3]


def array_images(images: Any, image_size: int, channels: int) -> torch.Tensor:
    """Image arrays as the model's pixels: ``uint8 [N, channels, image_size, image_size]``.

    Accepts torch tensors or numpy arrays in the layouts of :data:`ARRAY_LAYOUTS` (module docstring):
    ``uint8``, or floats in ``[0, 1]`` (rounded to 8 bits, so an array and the PNG file of the same
    picture give the same pixels). A shape that fits two layouts (``[3, H, 3]``) raises ``ValueError``.
    """
    _check_channels(channels)
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
    x = _as_uint8(_channels_first(x.detach().cpu()))
    if x.shape[1] == 4:
        x = _rgba_on_white(x.contiguous())
    return resize(_to_channels(x, channels), image_size)
