"""Image -> tensor preprocessing and training augmentation.

* :func:`load_image`: any image file (or PIL image) -> ``[C, S, S]`` float32 in ``[0, 1]``; the whole
  image is resized to the square model input (no centre crop: a search by example must see all of it).
* :func:`random_shift`: the paper's random pixel shifts, batched in torch on ``[N, C, H, W]`` tensors
  (uint8 or float), with one generator so runs repeat.
* :func:`augmented_view`: the unlabelled-folder ("instance") positives: a random crop of part of the
  image, a scale change, colour jitter and JPEG re-compression, so a crop learns to find its source.
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, UnidentifiedImageError

__all__ = [
    "SkippedImages",
    "UnreadableImage",
    "augmented_view",
    "load_image",
    "open_image",
    "pil_to_tensor",
    "random_shift",
    "to_uint8",
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


def open_image(source: str | Path | Image.Image, channels: int) -> Image.Image:
    """Decode ``source`` fully and convert it to ``"L"`` (``channels=1``) or ``"RGB"`` (3).

    Raises :class:`UnreadableImage` (a ``ValueError``) naming the file when it cannot be decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
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


def pil_to_tensor(image: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """Resize a PIL image to ``image_size`` square and return ``[C, S, S]`` uint8."""
    image = open_image(image, channels)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_image(source: str | Path | Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """Read one image as the model input: ``[channels, image_size, image_size]`` float32 in ``[0, 1]``.

    Raises :class:`UnreadableImage` (a ``ValueError`` naming the file) when ``source`` is not a readable
    image.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return pil_to_tensor(open_image(source, channels), image_size, channels).float().div_(255.0)


def to_uint8(image: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """Like :func:`load_image` but ``uint8`` (4x less memory for in-memory image stores)."""
    return pil_to_tensor(image, image_size, channels)


def random_shift(
    images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift every image of ``[N, C, H, W]`` by its own random offset in ``[-max_shift, max_shift]``.

    Vacated pixels are filled with edge values (replicate padding) so no artificial border appears.
    Works on uint8 or float tensors and returns the same dtype; one batched gather, no Python loop.
    """
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    s = int(max_shift)
    src = images if images.is_floating_point() else images.float()
    padded = torch.nn.functional.pad(src, (s, s, s, s), mode="replicate")
    offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)[None, :]  # [N, H]
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)[None, :]  # [N, W]
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    out = out.permute(0, 3, 1, 2).contiguous()
    return out if images.is_floating_point() else out.to(images.dtype)


def augmented_view(
    image: Image.Image,
    image_size: int,
    channels: int,
    rng: random.Random,
    *,
    min_area: float = 0.25,
    max_aspect: float = 4 / 3,
    jitter: float = 0.3,
    jpeg_quality: tuple[int, int] = (30, 90),
) -> torch.Tensor:
    """A random view of ``image`` for instance training: ``[C, S, S]`` uint8.

    A crop covering ``min_area``..1 of the image (aspect ratio within ``1/max_aspect..max_aspect``),
    resized to the model input (the scale change), brightness/contrast/saturation each scaled by a
    factor in ``1 +- jitter``, and JPEG re-compression at a quality in ``jpeg_quality``.
    """
    image = open_image(image, 3)
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(min_area, 1.0)
        aspect = np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect)))
        cw = int(round((target * aspect) ** 0.5))
        ch = int(round((target / aspect) ** 0.5))
        if 0 < cw <= width and 0 < ch <= height:
            left, top = rng.randint(0, width - cw), rng.randint(0, height - ch)
            image = image.crop((left, top, left + cw, top + ch))
            break
    image = image.resize((image_size, image_size), Image.BILINEAR)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(1 - jitter, 1 + jitter))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(*jpeg_quality))
    buffer.seek(0)
    with Image.open(buffer) as recompressed:
        image = recompressed.convert("RGB")
    return pil_to_tensor(image, image_size, channels)
