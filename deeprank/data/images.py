"""Decoding and resizing: the one path from any image input to the model's input pixels.

Every input kind (image files, PIL images, numpy/torch image arrays, the bundled Fashion-MNIST arrays,
server uploads) ends the same way, so the same picture embeds to the same vector whatever form it
came in:

1. decode to a PIL image (:func:`open_image`; transparency composited on white) or take the array;
2. convert to ``uint8 [C, H, W]`` with ``C`` the model's channels (grey <-> RGB as Pillow converts:
   ITU-R 601 luma for RGB -> grey; float arrays in ``[0, 1]`` are rounded to 8 bits first);
3. :func:`resize` to the square model input: bilinear with antialiasing (torch's uint8 kernel; the
   whole image, no centre crop: a search by example must see all of it).

:func:`image_tensor` does 1-3 for one file or PIL image, :func:`array_images` for arrays. Unreadable
files raise :class:`UnreadableImage`; long runs count them in :class:`SkippedImages`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "SkippedImages",
    "UnreadableImage",
    "array_images",
    "image_tensor",
    "load_image",
    "open_image",
    "resize",
    "resize_pil",
]


class UnreadableImage(ValueError):
    """A file that is missing, truncated or not an image; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: not a readable image ({reason})")
        self.path = str(path)
        self.reason = reason


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


def _check_channels(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def open_image(source: str | Path | Image.Image, channels: int) -> Image.Image:
    """Decode ``source`` fully and convert it to ``"L"`` (``channels=1``) or ``"RGB"`` (3).

    Raises :class:`UnreadableImage` (a ``ValueError``) naming the file when it cannot be decoded.
    """
    mode = _check_channels(channels)
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: truncated files fail here, not later in a batch
                image = opened.copy()
        except FileNotFoundError:
            raise UnreadableImage(path, "file not found") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImage(path, f"{type(exc).__name__}: {exc}") from None
    if image.mode in ("RGBA", "LA", "P"):
        # Composite transparency on white, as image viewers show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


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


def image_tensor(source: str | Path | Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """One image file or PIL image as the model's pixels: ``uint8 [channels, image_size, image_size]``.

    Raises :class:`UnreadableImage` when ``source`` is not a readable image.
    """
    return resize(_pil_pixels(open_image(source, channels)), image_size)


def load_image(source: str | Path | Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """Like :func:`image_tensor`, as ``float32`` in ``[0, 1]`` (what the models take)."""
    return image_tensor(source, image_size, channels).float().div_(255.0)


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
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


def array_images(images: Any, image_size: int, channels: int) -> torch.Tensor:
    """Image arrays as the model's pixels: ``uint8 [N, channels, image_size, image_size]``.

    Accepts torch tensors or numpy arrays ``[N, C, H, W]``, ``[C, H, W]`` (one image) or ``[N, H, W]``
    (grey), with ``C`` 1 or 3, ``uint8`` or floats in ``[0, 1]`` (rounded to 8 bits, so an array and
    the PNG file of the same picture give the same pixels).
    """
    _check_channels(channels)
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
    x = _as_uint8(x.detach().cpu())
    if x.dim() == 3:
        x = x.unsqueeze(1) if x.shape[0] not in (1, 3) else x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], [C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
    return resize(_to_channels(x, channels), image_size)
