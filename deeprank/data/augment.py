"""Augmentations: the paper's pixel shifts, instance-training views, and crops as queries.

* :func:`random_shift`: the paper's random pixel shifts, batched in torch on ``[N, C, H, W]`` tensors
  (uint8 or float), with one generator so runs repeat.
* :func:`augmented_view`: the unlabelled-folder ("instance") positives: a random crop of part of the
  image, a scale change, colour jitter and JPEG re-compression, so a crop learns to find its source.
* :func:`random_crops`: the applied report's "crops as queries" for crop-to-source evaluation.
"""

from __future__ import annotations

import io
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from .images import image_tensor, open_image, resize_pil

__all__ = ["augmented_view", "random_crops", "random_shift"]


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
    image = resize_pil(image, image_size)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(1 - jitter, 1 + jitter))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(*jpeg_quality))
    buffer.seek(0)
    with Image.open(buffer) as recompressed:
        image = recompressed.convert("RGB")
    return image_tensor(image, image_size, channels)


def random_crops(
    images: torch.Tensor, scale: tuple[float, float] = (0.35, 0.65), seed: int = 0
) -> torch.Tensor:
    """A random axis-aligned crop of each image (area share in ``scale``), resized back to full size.

    These are the applied report's "crops as queries": each crop should retrieve its source image.
    Returns the input's dtype (uint8 pixels are rounded).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    gen = torch.Generator().manual_seed(seed)
    num = images.shape[0]
    side = torch.sqrt(lo + (hi - lo) * torch.rand(num, generator=gen, dtype=torch.float64)).float()
    shift = (1 - side)[:, None] * (2 * torch.rand(num, 2, generator=gen) - 1)
    theta = torch.zeros(num, 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    crops = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crops if images.is_floating_point() else crops.round_().clamp_(0, 255).to(images.dtype)
