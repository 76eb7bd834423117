"""Any image Pillow decodes → one Fashion-MNIST-like float32 [28, 28, 1] array in [0, 1].

Fashion-MNIST shows a light article on a black background: its product photos (dark article on
white) were trimmed to the article, fitted with the longest side to 28 pixels, centred and negated.
`load_image` maps an input the same way:

1. Transparency: a transparent pixel is background, so it ends black whatever else happens.
2. Polarity: the backdrop is the ring of outermost pixels (transparent ones seen as white, as a
   viewer shows a cut-out product photo). If the ring's mean is light (> 0.5), the image is a photo
   and is negated. No dataset image is negated (all 70,000 are tested in tests/test_images.py).
3. Geometry: a 28×28 image is taken as framed like the dataset and kept pixel for pixel. Any other
   size has its backdrop level subtracted, is trimmed to the article, fitted and centred.

Every failure is an `errors.ImageError` with a one-line message naming the input; images over
`MAX_PIXELS` are refused from their header, before any pixel is decoded (decompression bombs).
"""

import io
import os
import stat
from typing import Optional, Union
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

from fmnist_jax import errors

SIDE = 28  # Fashion-MNIST images are SIDE × SIDE, one channel.
MAX_PIXELS = 64 * 2**20  # Larger images are refused undecoded; any camera photo fits.
WORK_SIDE = 512  # Large images are box-reduced to about this side before the float work.
POLARITY_LEVEL = 0.5  # A backdrop ring lighter than this on average means a photo: negate it.
BACKDROP_PERCENTILE = 10  # The backdrop level subtracted before trimming: this percentile of the ring.
CONTENT_LEVEL = 0.05  # After backdrop subtraction, pixels above this belong to the article.
# EPS is decoded by running Ghostscript: not for untrusted files. Every other reader is allowed.
_EXCLUDED_FORMATS = ("EPS",)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Integer modes scaled by 2**16 - 1.

Source = Union[str, os.PathLike, bytes, bytearray]


def load_image(source: Source, name: Optional[str] = None) -> np.ndarray:
  """A path or an image file's bytes → float32 [28, 28, 1] in [0, 1]; raises errors.ImageError.

  `name` labels the input in error messages (default: the path, or "<bytes>").
  """
  if isinstance(source, (bytes, bytearray)):
    name = name or "<bytes>"
    if not source:
      raise _error(name, "empty input (0 bytes)", "pass the content of a PNG or JPEG file")
    return _load(io.BytesIO(bytes(source)), name)
  path = os.fspath(source)
  name = name or str(path)
  try:
    info = os.stat(path)
  except FileNotFoundError:
    raise _error(name, "no such file", "check the path") from None
  except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path.
    raise _error(name, f"cannot be accessed ({_reason(e)})", "check the path and its permissions") from None
  if stat.S_ISDIR(info.st_mode):
    raise _error(name, "is a directory", "pass image files, e.g. DIR/*.png")
  if not stat.S_ISREG(info.st_mode):
    raise _error(name, "is not a regular file", "pass an image file")
  if info.st_size == 0:
    raise _error(name, "empty file (0 bytes)", "pass a PNG or JPEG image")
  try:
    f = open(path, "rb")
  except OSError as e:
    raise _error(name, f"cannot be read ({_reason(e)})", "check its permissions") from None
  with f:
    return _load(f, name)


def _load(fp, name: str) -> np.ndarray:
  gray, alpha = _decode(fp, name)
  backdrop = _ring(gray * alpha + (1.0 - alpha))  # Transparent pixels seen as white.
  article = alpha * (1.0 - gray) if backdrop.mean() > POLARITY_LEVEL else alpha * gray
  if article.shape != (SIDE, SIDE):
    article = _fit(article)
  return article.astype(np.float32)[..., None]


def _decode(fp, name: str):
  """(gray, alpha) float arrays in [0, 1] of the first frame, at most about WORK_SIDE a side."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Plugins warn about odd metadata; a failure raises instead.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      im = Image.open(fp, formats=_allowed_formats())
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
      raise _too_large(name, None) from None
    except Image.UnidentifiedImageError:
      raise _error(name, "not an image Pillow can read", "pass a PNG or JPEG image") from None
    except Exception as e:  # pylint: disable=broad-except  # Pillow's readers raise many kinds.
      raise _error(name, f"cannot be decoded ({_reason(e)})", "re-export it as PNG or JPEG") from None
    width, height = im.size
    if width * height > MAX_PIXELS:
      raise _too_large(name, im.size)
    if width * height == 0:
      raise _error(name, "has no pixels", "pass a non-empty image")
    try:
      im.draft(None, (WORK_SIDE, WORK_SIDE))  # JPEG decodes at a reduced scale; a no-op elsewhere.
      im = ImageOps.exif_transpose(im)  # Phone photos store their rotation in EXIF.
      return _planes(im)
    except Exception as e:  # pylint: disable=broad-except  # Truncated or corrupt data, unconvertible modes.
      raise _error(name, f"cannot be decoded ({_reason(e)})", "re-export it as PNG or JPEG") from None


def _allowed_formats() -> list:
  Image.init()
  return [f for f in Image.OPEN if f not in _EXCLUDED_FORMATS]


def _planes(im: Image.Image):
  """Gray and alpha of any mode; 16-bit gray keeps its precision (Pillow's L conversion clips it)."""
  if im.mode in _SIXTEEN_BIT_MODES:
    planes = [_reduced(im.convert("F"))]
    scale = 2.0**16 - 1
  elif im.mode == "F":
    planes, scale = [_reduced(im)], 1.0
  elif im.has_transparency_data:
    planes, scale = _reduced(im.convert("LA")).split(), 255.0
  else:
    planes, scale = [_reduced(im.convert("L"))], 255.0
  gray, *alpha = (np.nan_to_num(np.asarray(p, np.float32) / scale).clip(0.0, 1.0) for p in planes)
  return gray, (alpha[0] if alpha else np.ones_like(gray))


def _reduced(im: Image.Image) -> Image.Image:
  factor = max(im.size) // WORK_SIDE
  return im.reduce(factor) if factor > 1 else im


def _ring(x: np.ndarray) -> np.ndarray:
  """The outermost pixels of a 2-D array."""
  if min(x.shape) <= 2:
    return x.ravel()
  return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def _fit(article: np.ndarray) -> np.ndarray:
  """Backdrop to black, trim to the article, longest side to SIDE, centred: the dataset's recipe."""
  level = float(np.percentile(_ring(article), BACKDROP_PERCENTILE))
  if level < 1.0:
    article = np.clip(article - level, 0.0, None) / (1.0 - level)
  rows, cols = np.nonzero(article > CONTENT_LEVEL)
  if rows.size:  # A blank image stays whole.
    article = article[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  height, width = article.shape
  scale = SIDE / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  resized = Image.fromarray(np.ascontiguousarray(article, np.float32)).resize(
      size, Image.Resampling.LANCZOS)
  out = np.zeros((SIDE, SIDE), np.float32)
  top, left = (SIDE - size[1] + 1) // 2, (SIDE - size[0] + 1) // 2  # As the dataset rounds.
  out[top:top + size[1], left:left + size[0]] = np.clip(np.asarray(resized), 0.0, 1.0)
  return out


def _too_large(name: str, size) -> errors.ImageError:
  dims = f"{size[0]}×{size[1]} pixels" if size else "its size"
  return _error(name, f"{dims} is over the {MAX_PIXELS // 2**20}-megapixel limit (a decompression bomb?)",
                "downscale it first")


def _reason(e: BaseException) -> str:
  return (getattr(e, "strerror", None) or str(e) or type(e).__name__)


def _error(name: str, problem: str, fix: str) -> errors.ImageError:
  return errors.ImageError(" ".join(f"{name}: {problem}; {fix}".split())[:500])
