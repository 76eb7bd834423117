"""The image loader: dataset images pass unchanged, other renderings map onto them, bad files fail in one line."""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import ImageFile
import pytest

import fmnist_jax
from fmnist_jax import errors
from fmnist_jax import images


def encode(array_or_image, fmt="PNG", **kwargs) -> bytes:
  im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


@pytest.fixture(scope="module")
def samples(fmnist):
  """One test image per class: uint8 [28, 28]."""
  test = fmnist["test"]
  return [test.images[np.argmax(test.labels == c), ..., 0] for c in range(10)]


def renderings(x: np.ndarray) -> dict:
  """The same 28×28 article as other kinds of files: each must load exactly as the plain PNG."""
  rng = np.random.default_rng(0)
  garbage = rng.integers(0, 256, x.shape + (3,), np.uint8)  # Colour under fully transparent pixels.
  cutout = np.where((x > 0)[..., None], np.repeat(255 - x[..., None], 3, -1), garbage)
  return {
      "photo_style": encode(255 - x),
      "rgb": encode(np.repeat(x[..., None], 3, -1)),
      "rgba_cutout": encode(np.dstack([cutout, np.where(x > 0, 255, 0).astype(np.uint8)])),
      "rgba_ink": encode(np.dstack([np.zeros_like(cutout), x])),  # Black ink, coverage = intensity.
      "sixteen_bit": encode((x.astype(np.uint16) * 257)),
      "palette_gif": encode(Image.fromarray(x).convert("P"), "GIF"),
      "bmp": encode(x, "BMP"),
  }


def test_dataset_images_load_pixel_for_pixel(fmnist):
  for x in fmnist["test"].images[:200, ..., 0]:
    out = images.load_image(encode(x))
    assert out.shape == fmnist_jax.IMAGE_SHAPE and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], x.astype(np.float32) / 255.0)


@pytest.mark.slow
def test_polarity_rule_keeps_every_one_of_the_70000_dataset_images(fmnist):
  """The claim in images.py and docs/predict.md: no dataset image is taken for a photo and negated."""
  count = 0
  for split in ("train", "test"):
    for x in fmnist[split].images[..., 0]:
      np.testing.assert_array_equal(images.load_image(encode(x))[..., 0], x.astype(np.float32) / 255.0)
      count += 1
  assert count == 70_000


def test_photo_style_transparent_and_other_renderings_load_as_the_plain_image(samples):
  for x in samples:
    plain = images.load_image(encode(x))
    for kind, data in renderings(x).items():
      np.testing.assert_allclose(images.load_image(data), plain, atol=1e-6, err_msg=kind)


def product_photo(x: np.ndarray, canvas=(1200, 900), scale=24, offset=(150, 100), quality=92,
                  background=255) -> bytes:
  """x as a photo: dark article, upscaled, off-centre on a large white canvas, JPEG-compressed."""
  article = Image.fromarray(255 - x).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
  photo = Image.new("L", canvas, background)
  mask = Image.fromarray(np.where(x > 0, 255, 0).astype(np.uint8)).resize(article.size)
  photo.paste(article, offset, mask)
  return encode(photo.convert("RGB"), "JPEG", quality=quality)


def blurred(x: np.ndarray) -> np.ndarray:
  """3×3 box blur: a one-pixel shift from rounding the fitted size should not count as a miss."""
  padded = np.pad(x, 1)
  return sum(padded[i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9


def test_product_photo_is_negated_trimmed_fitted_and_centred(samples):
  for n, x in enumerate(samples):
    out = images.load_image(product_photo(x))[..., 0]
    plain = x.astype(np.float32) / 255.0
    assert np.abs(out - plain).mean() < 0.05, n  # Negated, backdrop black, the article where it was.
    assert np.corrcoef(blurred(out).ravel(), blurred(plain).ravel())[0, 1] > 0.95, n


def test_geometry_longest_side_fills_28_and_is_centred():
  bar = np.zeros((300, 500), np.uint8)
  bar[40:100, 100:400] = 255  # A 300 × 60 light bar: 28 × 5.6 after fitting.
  out = images.load_image(encode(bar))[..., 0]
  rows = np.nonzero(out.max(1) > 0.5)[0]
  cols = np.nonzero(out.max(0) > 0.5)[0]
  assert (cols.min(), cols.max()) == (0, 27)
  assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 0.5 and 4 <= len(rows) <= 7


def test_exif_rotation_is_applied():
  tall = np.zeros((90, 30), np.uint8)
  tall[:, 10:20] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display.
  rotated = images.load_image(encode(Image.fromarray(tall.T.copy()), "PNG", exif=exif))
  np.testing.assert_allclose(rotated, images.load_image(encode(tall)), atol=1e-6)


def test_bytes_and_path_give_the_same_array(tmp_path, samples):
  path = tmp_path / "x.png"
  path.write_bytes(encode(samples[3]))
  np.testing.assert_array_equal(images.load_image(path), images.load_image(path.read_bytes()))
  np.testing.assert_array_equal(images.load_image(str(path)), images.load_image(path.read_bytes()))


def png_header_only(width: int, height: int) -> bytes:
  """A valid PNG header declaring width × height, over a tiny body."""
  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def bad_files(tmp_path, x) -> dict:
  """name → (path, a phrase its error must contain)."""
  png = encode(x)
  files = {
      "truncated.png": (png[:len(png) // 2], "cannot be decoded"),
      "text.png": (b"this is not an image\n", "not an image"),
      "empty.png": (b"", "empty file"),
      "bomb.png": (png_header_only(9000, 9000), "megapixel limit"),  # Over ours, under Pillow's.
      "huge.png": (png_header_only(100_000, 100_000), "megapixel limit"),  # Over Pillow's too.
      "ghostscript.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n", "not an image"),
      "lab.tif": (encode(Image.new("LAB", (28, 28)), "TIFF"), "cannot be decoded"),
  }
  out = {}
  for name, (data, phrase) in files.items():
    (tmp_path / name).write_bytes(data)
    out[name] = (str(tmp_path / name), phrase)
  os.mkfifo(tmp_path / "fifo")
  out["fifo"] = (str(tmp_path / "fifo"), "not a regular file")
  out["missing.png"] = (str(tmp_path / "missing.png"), "no such file")
  out["folder"] = (str(tmp_path), "is a directory")
  return out


def test_each_bad_file_is_one_line_naming_it_and_the_problem(tmp_path, samples):
  for name, (path, phrase) in bad_files(tmp_path, samples[0]).items():
    with pytest.raises(errors.ImageError) as info:
      images.load_image(path)
    message = str(info.value)
    assert message.startswith(path + ": ") and phrase in message and "\n" not in message, (name, message)


def test_empty_bytes_are_refused():
  with pytest.raises(errors.ImageError, match="<bytes>: empty input"):
    images.load_image(b"")


def test_oversized_image_is_refused_before_any_pixel_is_decoded(monkeypatch, samples):
  decoded = []
  real_load = ImageFile.ImageFile.load
  monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
  monkeypatch.setattr(images, "MAX_PIXELS", 28 * 28 - 1)
  with pytest.raises(errors.ImageError, match="28×28 pixels is over"):
    images.load_image(encode(samples[0]))
  assert not decoded
  monkeypatch.setattr(images, "MAX_PIXELS", 28 * 28)
  images.load_image(encode(samples[0]))
  assert decoded  # The spy sees decoding when it happens.
