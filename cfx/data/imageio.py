"""Reading images of any mode and size into float arrays; masks with nearest neighbour."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cfx.errors import DataError

#: Largest accepted image side, in pixels, before resizing (uploads bigger than this are refused).
MAX_SIDE = 8192

Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE


def open_image(source: str | Path | bytes | BinaryIO, name: str | None = None) -> Image.Image:
    """Open and fully decode an image, raising :class:`DataError` with a readable line on failure.

    Args:
        source: a path, raw bytes or a binary file object.
        name: the name to use in messages (default: the path).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
    if isinstance(source, (str, Path)):
        check_regular_file(source, label)
    try:
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        with warnings.catch_warnings():  # the size is checked below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)  # reads the header only
        w, h = img.size
        if max(w, h) > MAX_SIDE or w * h > Image.MAX_IMAGE_PIXELS:  # refused before decoding a pixel
            raise DataError(f"image {label} is {w}x{h} px; the limit is {MAX_SIDE} px a side")
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{label} is not an image cfx can read (PNG, JPEG, TIFF, BMP, GIF or WebP)") from None
    except Image.DecompressionBombError:
        raise DataError(f"image {label} has too many pixels; the limit is {MAX_SIDE} px a side") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image {label} is damaged or truncated ({exc.__class__.__name__})") from None
    if max(img.size) > MAX_SIDE:
        raise DataError(f"image {label} is {img.size[0]}x{img.size[1]} px; the limit is {MAX_SIDE} px a side")
    if img.size[0] < 8 or img.size[1] < 8:
        raise DataError(f"image {label} is {img.size[0]}x{img.size[1]} px; it must be at least 8 px a side")
    return img


def check_regular_file(path: str | Path, label: str | None = None) -> None:
    """Refuse, in one line, what is not a regular file that can be read: a missing file, a dangling
    or looping link, a folder, a FIFO or device (which would block or never end)."""
    import stat

    label = label or str(path)
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        kind = "a broken link" if Path(path).is_symlink() else "missing"
        raise DataError(f"image {label} cannot be read: it is {kind}") from None
    except OSError as exc:
        raise DataError(f"image {label} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"image {label} is not a regular file")


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, I;16, I, F, RGB, RGBA, CMYK, YCbCr...) to L or RGB.

    16-bit and 32-bit integer images are scaled by their bit depth (not by their own maximum, so
    that a dark image stays dark); float images are taken as [0, 1]. Transparency is composited on
    black.
    """
    img = ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            scale = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        elif mode == "I" and arr.max(initial=0) <= 255:
            scale = 255.0
        else:
            scale = 65535.0
        arr8 = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr8, mode="L")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    return img


def is_gray(img: Image.Image) -> bool:
    """True when an image carries no colour (gray modes, or RGB with equal channels)."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return True
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)[::4, ::4]
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2 and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= 2)


def image_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image as a float32 array (C, size, size) in [0, 1], resized with antialiasing."""
    img = to_mode(img, channels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_image(source: str | Path | bytes | BinaryIO, size: int, channels: int, name: str | None = None) -> np.ndarray:
    """Open, convert and resize an image; see :func:`image_to_array`."""
    return image_to_array(open_image(source, name), size, channels)


def load_mask(path: str | Path, size: int, image_size: tuple[int, int] | None = None,
              notes: list[str] | None = None) -> np.ndarray:
    """A ground-truth mask as a bool array (size, size), resized with nearest neighbour.

    Args:
        image_size: (width, height) of the mask's image file; a mask of another size is resized
            too, with a note in ``notes`` (masks are made at their image's size).
    """
    img = open_image(path)
    if image_size is not None and img.size != tuple(image_size) and notes is not None:
        notes.append(f"mask {path} is {img.size[0]}x{img.size[1]} px but its image is {image_size[0]}x"
                     f"{image_size[1]}: resized to fit")
    arr = np.asarray(to_mode(img, 1))
    img = Image.fromarray((arr > 0).astype(np.uint8) * 255)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def array_to_pil(arr: np.ndarray) -> Image.Image:
    """(C,H,W) or (H,W) float [0,1] to a PIL image (L or RGB)."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a)
