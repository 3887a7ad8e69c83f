"""Writing small image files for tests."""

from pathlib import Path

from PIL import Image


def write_image(path: Path, size=(20, 16), color=(200, 10, 10), mode="RGB") -> Path:
    """A solid-colour image file at ``path`` (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path
