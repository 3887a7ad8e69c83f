"""Hand-crafted features of the paper (supplement section 4): baselines and the "golden feature".

* :func:`color_histogram`: LAB colour histogram with 16x16x16 = 4096 bins, normalised to sum 1;
  compared with the normalised L1 distance (``||a - b||_1 / 2`` in ``[0, 1]``).
* :func:`hog`: histograms of oriented gradients on the image resized to 96x96, 16x16-pixel cells, 32
  values per cell (Felzenszwalb-style: 18 signed + 9 unsigned orientations, 4 gradient energies, 1
  contrast), compared with the plain L1 distance (the supplement found it better than normalised L1).
* :func:`wavelet`: Haar wavelet signature after Jacobs, Finkelstein & Salesin (1995): standard 2-D Haar
  decomposition per YIQ channel, the ``keep`` largest coefficients quantised to their sign, compared
  with a weighted L0 distance (:func:`wavelet_distance`) whose weights fall with the scale.

Every feature function takes images as ``uint8`` numpy ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]``,
or a torch tensor ``[N, C, H, W]`` (uint8, or float in ``[0, 1]``) and returns float32 numpy ``[N, F]``.
The vectors are usable directly as baseline embeddings (searched with squared L2 by an index);
:data:`DISTANCES` holds the distances the paper used, for the golden-feature relevance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCES",
    "color_histogram",
    "color_distance",
    "hog",
    "hog_distance",
    "wavelet",
    "wavelet_distance",
]


def _as_batch(images: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
    """Any supported image batch -> float32 torch ``[N, C, H, W]`` in ``[0, 1]``."""
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got {tuple(x.shape)}")
        return x.float().div(255.0) if not x.is_floating_point() else x.float()
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, 3], got shape {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    return x.float().div(255.0) if array.dtype == np.uint8 else x.float()


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in ``[0, 1]`` -> CIE LAB (D65): L in ``[0, 100]``, a and b about ``[-128, 127]``."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ],
        dtype=rgb.dtype,
    )
    xyz = torch.einsum("ij,njhw->nihw", m, linear)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > (6 / 29) ** 3, t.clamp_min(1e-12) ** (1 / 3), t / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], dim=1)


def color_histogram(images: np.ndarray | torch.Tensor, bins: int = 16) -> np.ndarray:
    """LAB colour histograms, ``bins^3`` values per image summing to 1 (float32 ``[N, bins^3]``)."""
    x = _rgb(_as_batch(images))
    lab = _rgb_to_lab(x)
    lo = torch.tensor([0.0, -128.0, -128.0]).view(1, 3, 1, 1)
    span = torch.tensor([100.0, 256.0, 256.0]).view(1, 3, 1, 1)
    q = ((lab - lo) / span * bins).long().clamp_(0, bins - 1)  # [N, 3, H, W]
    flat = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # [N, H, W]
    n = flat.shape[0]
    offsets = torch.arange(n)[:, None] * bins**3
    counts = torch.bincount((flat.reshape(n, -1) + offsets).reshape(-1), minlength=n * bins**3)
    hist = counts.reshape(n, bins**3).float()
    return (hist / hist.sum(dim=1, keepdim=True).clamp_min(1)).numpy()


def hog(images: np.ndarray | torch.Tensor, size: int = 96, cell: int = 16) -> np.ndarray:
    """HOG on the image resized to ``size`` square, ``cell``-pixel cells, 32 values per cell.

    Per cell: 18 contrast-sensitive orientations, 9 contrast-insensitive ones (each normalised by the
    four 2x2-cell blocks around the cell, clipped at 0.2 and summed), 4 gradient energies (one per
    block normalisation) and the cell's mean gradient magnitude. Output ``[N, (size/cell)^2 * 32]``.
    """
    if size % cell:
        raise ValueError(f"size {size} must be a multiple of cell {cell}")
    x = _rgb(_as_batch(images))
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2])[:, 0]
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1])[:, 0]
    magnitude = torch.sqrt(gx**2 + gy**2)
    angle = torch.atan2(gy, gx) % (2 * torch.pi)  # signed orientation in [0, 2pi)
    position = angle / (2 * torch.pi) * 18
    low = position.floor().long() % 18
    high = (low + 1) % 18
    w_high = position - position.floor()
    n, h, w = magnitude.shape
    cy, cx = h // cell, w // cell
    # One weighted bincount over (image, cell, bin): no [N, 18, H, W] temporary.
    cell_id = ((torch.arange(h) // cell)[:, None] * cx + (torch.arange(w) // cell)[None, :]).expand(n, h, w)
    base = (torch.arange(n)[:, None, None] * (cy * cx) + cell_id) * 18
    size_all = n * cy * cx * 18
    signed = torch.bincount(
        (base + low).reshape(-1), (magnitude * (1 - w_high)).reshape(-1), minlength=size_all
    )
    signed += torch.bincount((base + high).reshape(-1), (magnitude * w_high).reshape(-1), minlength=size_all)
    signed = signed.float().reshape(n, cy, cx, 18).permute(0, 3, 1, 2)  # [N, 18, cy, cx]
    unsigned = signed[:, :9] + signed[:, 9:]
    energy = (unsigned**2).sum(dim=1, keepdim=True)  # [N, 1, cy, cx]
    # Four 2x2 blocks touch each cell: block sums at the 4 corners.
    e = F.pad(energy, (1, 1, 1, 1))
    block = e[:, :, :-1, :-1] + e[:, :, 1:, :-1] + e[:, :, :-1, 1:] + e[:, :, 1:, 1:]  # [N, 1, cy+1, cx+1]
    norms = torch.stack(
        [block[:, 0, :-1, :-1], block[:, 0, 1:, :-1], block[:, 0, :-1, 1:], block[:, 0, 1:, 1:]], dim=1
    )  # [N, 4, cy, cx]
    inv = 1.0 / torch.sqrt(norms + 1e-4)
    s = (signed[:, None] * inv[:, :, None]).clamp(max=0.2)  # [N, 4, 18, cy, cx]
    u = (unsigned[:, None] * inv[:, :, None]).clamp(max=0.2)  # [N, 4, 9, cy, cx]
    features = torch.cat(
        [
            0.5 * s.sum(dim=1),
            0.5 * u.sum(dim=1),
            0.2357 * u.sum(dim=2),  # gradient energy per block normalisation
            (F.avg_pool2d(magnitude[:, None], cell)),  # contrast
        ],
        dim=1,
    )  # [N, 32, cy, cx]
    return features.permute(0, 2, 3, 1).reshape(n, -1).contiguous().numpy()


def _haar_2d(x: torch.Tensor) -> torch.Tensor:
    """Standard 2-D Haar decomposition (full 1-D transform of rows, then of columns), orthonormal."""

    def transform_last(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        length = t.shape[-1]
        while length > 1:
            half = length // 2
            a, b = out[..., 0:length:2], out[..., 1:length:2]
            avg, diff = (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)
            out[..., :half], out[..., half:length] = avg, diff
            length = half
        return out

    return transform_last(transform_last(x).transpose(-1, -2)).transpose(-1, -2)


#: weight of a coefficient by its scale bin ``min(max(i, j), 5)``: the average colour (bin 0) counts
#: most, fine detail least. Our choice, in the spirit of Jacobs et al.'s trained weights.
WAVELET_BIN_WEIGHTS = (4.0, 1.0, 0.6, 0.45, 0.4, 0.35)


def _wavelet_weights(size: int) -> torch.Tensor:
    idx = torch.arange(size)
    level = torch.zeros(size, dtype=torch.long)
    level[1:] = torch.floor(torch.log2(idx[1:].float())).long() + 1
    bins = torch.maximum(level[:, None], level[None, :]).clamp(max=5)
    return torch.tensor(WAVELET_BIN_WEIGHTS)[bins]


def wavelet(images: np.ndarray | torch.Tensor, size: int = 32, keep: int = 40) -> np.ndarray:
    """Haar wavelet signatures: ``[N, 3 * size^2]`` float32.

    Each YIQ channel is resized to ``size`` (a power of two), decomposed, and all but the ``keep``
    largest-magnitude detail coefficients zeroed; the rest become ``+-1``. Entry ``(0, 0)`` holds the
    channel's average. Every entry is multiplied by ``sqrt(weight)`` so the squared L2 distance of two
    signatures approximates :func:`wavelet_distance` (it counts a sign flip 4x, a miss 1x).
    """
    if size & (size - 1):
        raise ValueError(f"size must be a power of two, got {size}")
    x = _rgb(_as_batch(images))
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    x = torch.einsum("ij,njhw->nihw", yiq, x)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    coeffs = _haar_2d(x)  # [N, 3, S, S]
    n = coeffs.shape[0]
    average = coeffs[:, :, 0, 0] / size  # the mean of the channel
    detail = coeffs.clone()
    detail[:, :, 0, 0] = 0
    flat = detail.reshape(n, 3, -1)
    keep = min(keep, flat.shape[-1] - 1)
    threshold = flat.abs().topk(keep, dim=-1).values[..., -1:]
    signs = torch.where(flat.abs() >= threshold, torch.sign(flat), torch.zeros_like(flat))
    signs = signs * (flat.abs() > 0)
    signature = signs.reshape(n, 3, size, size)
    signature[:, :, 0, 0] = average
    weights = _wavelet_weights(size).sqrt()
    return (signature * weights).reshape(n, -1).numpy().astype(np.float32)


def _pair_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if x.shape != y.shape or x.ndim not in (1, 2):
        raise ValueError(
            f"paired distances need two [N, F] (or [F]) arrays of one shape, got {x.shape}, {y.shape}"
        )
    return x, y


def _cdist(a, b, p: float) -> np.ndarray:
    x = torch.as_tensor(np.asarray(a), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float32)
    return torch.cdist(x[None], y[None], p=p)[0].numpy()


def color_distance(a, b, paired: bool = False) -> np.ndarray:
    """Normalised L1 distance ``||a - b||_1 / 2`` of colour histograms.

    ``[M, N]`` for all pairs of rows of ``a`` and ``b``; with ``paired=True`` row ``i`` with row ``i``
    (``[N]``, or a float for two single vectors ``[F]``).
    """
    if not paired:
        return _cdist(a, b, 1.0) / 2
    x, y = _pair_arrays(a, b)
    return np.abs(x - y).sum(axis=-1) / 2


def hog_distance(a, b, paired: bool = False) -> np.ndarray:
    """L1 distance of HOG features (``[M, N]``, or row by row with ``paired=True``)."""
    if not paired:
        return _cdist(a, b, 1.0)
    x, y = _pair_arrays(a, b)
    return np.abs(x - y).sum(axis=-1)


def _wavelet_layout(columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry weights (0 at the three channel averages) and the averages' columns of a signature."""
    size = int(round((columns // 3) ** 0.5))
    weights = _wavelet_weights(size).reshape(-1).repeat(3).double().numpy()
    averages = np.arange(3) * size * size
    weights[averages] = 0.0
    return weights, averages


def wavelet_distance(a, b, paired: bool = False) -> np.ndarray:
    """Weighted L0 distance of wavelet signatures (``[M, N]``, or row by row with ``paired=True``).

    ``w0 * |avg_a - avg_b|_1 + sum_i w_i [sign_a,i != sign_b,i]`` (the averages already carry
    ``sqrt(w0)``, see :func:`wavelet`).
    """
    root_w0 = float(np.sqrt(WAVELET_BIN_WEIGHTS[0]))
    if paired:
        x, y = _pair_arrays(a, b)
        w, avg = _wavelet_layout(x.shape[-1])
        mismatch = ((np.sign(x) != np.sign(y)) * w).sum(axis=-1)
        return (np.abs(x[..., avg] - y[..., avg]).sum(axis=-1) * root_w0 + mismatch).astype(np.float32)
    xa = torch.as_tensor(np.asarray(a), dtype=torch.float32)
    xb = torch.as_tensor(np.asarray(b), dtype=torch.float32)
    w_np, avg_np = _wavelet_layout(xa.shape[1])
    w, avg_idx = torch.from_numpy(w_np), torch.from_numpy(avg_np)  # float64: w.sum() - same cancels
    sa, sb = torch.sign(xa).double(), torch.sign(xb).double()
    # sum_i w_i [sa_i == sb_i] as three matrix products (both zero, both +1, both -1)
    same = ((1 - sa.abs()) * w) @ (1 - sb.abs()).T + ((sa > 0) * w) @ (sb > 0).double().T
    same += ((sa < 0) * w) @ (sb < 0).double().T
    mismatch = (w.sum() - same).float()
    avg = torch.cdist(xa[None, :, avg_idx], xb[None, :, avg_idx], p=1)[0]
    return (avg * root_w0 + mismatch).numpy()


#: feature name -> distance function ``f(a, b, paired=False)`` as the paper used it
DISTANCES: dict[str, Callable[..., np.ndarray]] = {
    "color": color_distance,
    "hog": hog_distance,
    "wavelet": wavelet_distance,
}
