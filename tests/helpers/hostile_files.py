"""Hostile image files, made by the tests themselves (nothing downloaded), and a corpus of them.

The byte builders (``png_header``, ``png_pixel_bomb``, ``png16``, ``exif_jpeg``, ...) are small and
exact; :func:`write_corpus` lays them out as a labelled collection and says what every entry must
become: skipped and counted (``Corpus.bad``), or embedded exactly like an 8-bit PNG of the picture
it shows (``Corpus.pairs``: a 16-bit PNG like its 8-bit gradient, an EXIF-rotated JPEG like its
upright pixels, ...), so a wrong answer cannot pass as a success.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# EXIF orientation -> the numpy view that shows the stored pixels upright (EXIF 2.3, table of tag
# 274), written without Pillow so that it checks Pillow's use, not restates it.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0))


def png_header(width: int = 30000, height: int = 30000) -> bytes:
    """A bomb by header: 45 bytes of PNG declaring ``width x height`` grey pixels, and no pixel data."""
    return PNG_SIGNATURE + _ihdr(width, height) + png_chunk(b"IEND", b"")


@cache
def png_pixel_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A bomb by pixels: a valid 1-bit black PNG of ``width x height`` (about 48 KB for 20000 x 20000)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        PNG_SIGNATURE + _ihdr(width, height, bit_depth=1) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def gradient16(width: int = 256, height: int = 6) -> np.ndarray:
    """``uint16 [height, width]``: each row runs 0..65535 left to right."""
    return np.tile(np.round(np.linspace(0, 65535, width)).astype(np.uint16), (height, 1))


def eight_bit(values16: np.ndarray) -> np.ndarray:
    """The float64 reference of 16 -> 8 bits: round(v * 255 / 65535) (the PNG specification's rule)."""
    return np.round(values16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png16(values: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of ``uint16`` values (Pillow opens it as ``I;16``)."""
    return encode(Image.fromarray(values.astype(np.uint16)))


def pgm16(values: np.ndarray) -> bytes:
    """A binary PGM with maximum value 65535 (Pillow opens it as mode ``I``)."""
    height, width = values.shape
    return b"P5\n%d %d\n65535\n" % (width, height) + values.astype(">u2").tobytes()


def float_tiff(values: np.ndarray) -> bytes:
    """A 32-bit float TIFF (mode ``F``)."""
    return encode(Image.fromarray(values.astype(np.float32)), "TIFF")


def noise(rng: np.random.Generator, height: int = 20, width: int = 24, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def blocks(height: int = 32, width: int = 48) -> np.ndarray:
    """An RGB picture of flat 8x8 blocks: JPEG keeps it nearly exact, and every turn of it differs."""
    y, x = np.mgrid[0:height, 0:width] // 8
    return np.stack([(x * 50) % 256, (y * 70) % 256, ((x + y) * 30) % 256], -1).astype(np.uint8)


def exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``pixels`` (as stored) carrying the EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def stored_pixels(data: bytes) -> np.ndarray:
    """Pillow's decode of image bytes as RGB, EXIF ignored: the pixels as stored."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def palette_alpha_png(
    rng: np.random.Generator, height: int = 20, width: int = 24
) -> tuple[bytes, np.ndarray]:
    """A palette PNG whose entries 0-7 are transparent; returns it and its RGB picture on white."""
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (height, width), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.tobytes())
    data = encode(image, transparency=bytes([0] * 8 + [255] * 8))
    on_white = np.where((indices < 8)[..., None], np.uint8(255), palette[indices])
    return data, on_white


def animated(frames: list[np.ndarray], fmt: str) -> bytes:
    """An animated GIF or APNG of RGB frames (first frame first)."""
    images = [Image.fromarray(f) for f in frames]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@dataclass
class Corpus:
    """What :func:`write_corpus` made under ``root``.

    ``bad``: entries that must be skipped and counted, with a fragment of the reason. ``pairs``:
    hostile file -> 8-bit PNG reference, which must embed identically. ``good``: files that must be
    embedded. ``bad_unprivileged``: entries unreadable only for a reader other than root (chmod 000).
    """

    root: Path
    bad: dict[Path, str] = field(default_factory=dict)
    pairs: dict[Path, Path] = field(default_factory=dict)
    good: list[Path] = field(default_factory=list)
    bad_unprivileged: dict[Path, str] = field(default_factory=dict)

    def expected_bad(self, privileged: bool) -> dict[Path, str]:
        return dict(self.bad) if privileged else {**self.bad, **self.bad_unprivileged}

    def expected_good(self, privileged: bool) -> list[Path]:
        if not privileged:
            return sorted(self.good)
        extra = [p for p in self.bad_unprivileged if p.is_file()]
        extra += [f for p in self.bad_unprivileged if p.is_dir() for f in p.iterdir()]
        return sorted([*self.good, *extra])


def _bad(corpus: Corpus, path: Path, data: bytes, reason: str) -> None:
    path.write_bytes(data)
    corpus.bad[path] = reason


def write_corpus(root: Path, rng: np.random.Generator) -> Corpus:
    """A labelled collection (``alpha/``, ``beta/``, ``hostile/``, ``locked/``) full of hostile files.

    Readable by every user (the folders 0755) except the chmod 000 entries, so that a test can run
    the commands as an unprivileged user.
    """
    corpus = Corpus(root)
    for category in ("alpha", "beta"):
        corpus.good += [write_png(root / category / f"{i}.png", noise(rng)) for i in range(4)]
    hostile = root / "hostile"
    hostile.mkdir(parents=True)
    corpus.good += [write_png(hostile / f"plain{i}.png", noise(rng)) for i in range(2)]
    _write_bad(corpus, hostile, rng)
    _write_pairs(corpus, hostile, rng)
    _write_links(corpus, hostile)
    locked = root / "locked"
    write_png(locked / "0.png", noise(rng))
    write_png(locked / "1.png", noise(rng))
    locked_file = write_png(hostile / "locked.png", noise(rng))
    for folder, _, _ in os.walk(root):
        os.chmod(folder, 0o755)
    os.chmod(locked_file, 0o000)
    os.chmod(locked, 0o000)
    corpus.bad_unprivileged = {locked_file: "Permission denied", locked: "not readable"}
    return corpus


def _write_bad(corpus: Corpus, folder: Path, rng: np.random.Generator) -> None:
    limit = "over the limit"
    _bad(corpus, folder / "bomb_header.png", png_header(30000, 30000), limit)
    _bad(corpus, folder / "bomb_pixels.png", png_pixel_bomb(), limit)
    _bad(corpus, folder / "bomb_our_limit.png", png_header(8000, 8000), "over the limit of 50000000")
    png = encode(Image.fromarray(noise(rng, 40, 40)))
    for offset in (8, 33, len(png) // 2, len(png) * 9 // 10):
        _bad(corpus, folder / f"truncated_png_{offset}.png", png[:offset], "")
    jpeg = encode(Image.fromarray(noise(rng, 40, 40)), "JPEG")
    for offset in (len(jpeg) // 2, len(jpeg) * 9 // 10):
        _bad(corpus, folder / f"truncated_jpeg_{offset}.jpg", jpeg[:offset], "truncated")
    _bad(corpus, folder / "empty.png", b"", "")
    _bad(corpus, folder / "text.png", b"not an image at all\n" * 20, "not an image")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    _bad(corpus, folder / "postscript.png", eps, "not an image")  # EPS would run Ghostscript
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    corpus.bad[fifo] = "not a regular file"


def _write_pairs(corpus: Corpus, folder: Path, rng: np.random.Generator) -> None:
    def pair(name: str, data: bytes, reference: np.ndarray) -> None:
        (folder / name).write_bytes(data)
        corpus.pairs[folder / name] = write_png(folder / f"{name}.ref.png", reference)

    values = gradient16(256, 6)
    pair("sixteen.png", png16(values), eight_bit(values))
    pair("sixteen.pgm", pgm16(values), eight_bit(values))
    pair("float.tif", float_tiff(values / 65535.0), eight_bit(values))
    for orientation in (3, 6, 8):
        data = exif_jpeg(blocks(), orientation)
        pair(f"exif{orientation}.jpg", data, np.ascontiguousarray(UPRIGHT[orientation](stored_pixels(data))))
    cmyk = encode(Image.fromarray(noise(rng)).convert("CMYK"), "JPEG", quality=95)
    pair("cmyk.jpg", cmyk, stored_pixels(cmyk))
    data, on_white = palette_alpha_png(rng)
    pair("palette_alpha.png", data, on_white)
    frames = [blocks(24, 24), 255 - blocks(24, 24)]
    gif = animated(frames, "GIF")
    pair("animated.gif", gif, stored_pixels(gif))
    pair("animated_apng.png", animated(frames, "PNG"), frames[0])
    plain = noise(rng)
    pair("png_named.jpg", encode(Image.fromarray(plain)), plain)  # the content decides, not the name
    corpus.good += [*corpus.pairs, *corpus.pairs.values()]


def _write_links(corpus: Corpus, folder: Path) -> None:
    os.symlink("..", folder / "loop")  # a folder inside itself
    corpus.bad[folder / "loop"] = "loop"
    os.symlink("self.png", folder / "self.png")
    corpus.bad[folder / "self.png"] = "broken symbolic link"
    os.symlink("missing.png", folder / "gone.png")
    corpus.bad[folder / "gone.png"] = "broken symbolic link"
