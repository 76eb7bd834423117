"""Fashion-MNIST as uint8 arrays, from TFDS or the original IDX files, and device-side batching.

Sources, in order (`data.source="auto"`): TFDS (download, or the original archives in
`data.manual_dir`); without TensorFlow, the IDX archives in `data.manual_dir` read directly; then
the IDX files of `data.idx_dirs` (Debian's dataset-fashion-mnist). `"tfds"` and `"idx"` pick one
kind. Every source is put in one canonical row order (rows sorted by their bytes), so a run does
not depend on where its data came from.
"""

import dataclasses
import gzip
import os
import socket
from typing import Dict, Optional
import urllib.parse

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import fmnist_jax
from fmnist_jax import errors
from fmnist_jax import tf_compat

SPLITS = tuple(fmnist_jax.SPLIT_SIZES)
_IDX_FILES = {  # split -> (images, labels) file stems of the original release.
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, 28, 28, 1]
  labels: np.ndarray  # int32 [N]


def canonical_order(split: Split) -> Split:
  """Sorts rows by (image bytes, label) so every source yields identical arrays."""
  n = len(split.labels)
  rows = np.concatenate([split.images.reshape(n, -1), split.labels.astype(np.uint8)[:, None]], 1)
  order = np.argsort(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel(),
                     kind="stable")
  return Split(split.images[order], split.labels[order])


def _read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzipped or raw) into a uint8 array of its declared shape."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise errors.DataError(f"{path}: not an unsigned-byte IDX file; replace it with the original file")
  ndim = data[3]
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise errors.DataError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} bytes); "
                           "replace it with the original file")
  return body.reshape(dims)


def _find_idx(folder: str, stem: str) -> Optional[str]:
  for name in (stem + ".gz", stem):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def load_idx_dir(folder: str) -> Dict[str, Split]:
  """Reads both splits from a folder holding the four original IDX files."""
  out = {}
  for split, (image_stem, label_stem) in _IDX_FILES.items():
    paths = [_find_idx(folder, s) for s in (image_stem, label_stem)]
    if None in paths:
      raise errors.DataError(f"{folder}: missing {image_stem}[.gz] or {label_stem}[.gz]")
    try:
      images, labels = (_read_idx(p) for p in paths)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
      raise errors.DataError(f"{folder}: cannot read the IDX files ({e}); replace them with the originals") from e
    if images.shape[1:] != fmnist_jax.IMAGE_SHAPE[:2] or len(images) != len(labels):
      raise errors.DataError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    out[split] = Split(images[..., None], labels.astype(np.int32))
  return out


def _check_reachable(url: str, timeout_s: float = 3.0) -> None:
  """Fails fast offline: TFDS itself retries a dead download for minutes."""
  parsed = urllib.parse.urlparse(url)
  try:
    socket.create_connection((parsed.hostname, parsed.port or 80), timeout=timeout_s).close()
  except OSError as e:
    raise errors.DataError(f"download server {parsed.hostname} unreachable ({e})") from e


def load_tfds(data_dir: Optional[str], manual_dir: Optional[str]) -> Dict[str, Split]:
  """Prepares (once) and reads fashion_mnist with TFDS; TF only does the reading, on the CPU."""
  tf_compat.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if not builder.is_prepared() and manual_dir is None:
    _check_reachable(type(builder).URL)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  out = {}
  for split in SPLITS:
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    out[split] = Split(ds["image"].astype(np.uint8), ds["label"].astype(np.int32))
  return out


def _check_sizes(data: Dict[str, Split]) -> None:
  for split, size in fmnist_jax.SPLIT_SIZES.items():
    if len(data[split].labels) != size or len(data[split].images) != size:
      raise ValueError(f"its {split} split holds {len(data[split].labels)} labels and {len(data[split].images)} "
                       f"images, Fashion-MNIST's {size}: truncated or not Fashion-MNIST")


def load_dataset(data_config) -> Dict[str, Split]:
  """Returns {'train', 'test'} Splits in canonical order, or raises DataError naming every place tried."""
  tried = []
  manual_dir = data_config.manual_dir  # Checked readable by validation.validate.
  use_tfds = data_config.source == "tfds" or (data_config.source == "auto" and tf_compat.tensorflow_available())
  if data_config.source == "auto":
    why = "data.source=auto, " + ("TensorFlow installed: TFDS first" if use_tfds else "no TensorFlow: IDX files")
  else:
    why = f"data.source={data_config.source}"
  sources = []
  if use_tfds:
    sources.append((f"TFDS fashion_mnist (data_dir={data_config.data_dir}, manual_dir={manual_dir})",
                    lambda: load_tfds(data_config.data_dir, manual_dir)))
  elif manual_dir is not None:
    sources.append((f"IDX files in data.manual_dir={manual_dir}", lambda: load_idx_dir(manual_dir)))
  if manual_dir is None and data_config.source != "tfds":
    for folder in data_config.idx_dirs:
      sources.append((f"IDX files in {folder}", lambda folder=folder: load_idx_dir(folder)))
  for name, load in sources:
    try:
      data = load()
      _check_sizes(data)
    except Exception as e:  # pylint: disable=broad-except  # TFDS raises many kinds; all mean "try the next".
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
      logging.warning("Fashion-MNIST not loaded from %s: %s", name, first_line)
      tried.append(f"{name}: {first_line}")
      continue
    logging.info("Fashion-MNIST loaded from %s (%s)", name, why)
    return {split: canonical_order(s) for split, s in data.items()}
  fixes = ["set --config.data.manual_dir to a folder with the four original .gz files"]
  if use_tfds and manual_dir is None:
    fixes.insert(0, "connect to the network for the TFDS download")
  if data_config.source != "tfds" and manual_dir is None:
    fixes.append("`apt-get install dataset-fashion-mnist` (or set --config.data.idx_dirs to folders with the "
                 "IDX files)")
  raise errors.DataError("Fashion-MNIST not found. Tried " + "; ".join(tried) + ". Fix: " + ", or ".join(fixes) + ".")


# --- Device side -------------------------------------------------------------------------------


def to_float(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 → float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def to_float_batch(batch: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
  return {**batch, "image": to_float(batch["image"])}


def epoch_permutation(shuffle_key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """The order of epoch `epoch`: derived from (key, epoch), so a resumed run sees the same data."""
  return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples)


def gather_batch(images: jax.Array, labels: jax.Array, perm: jax.Array, index, batch_size: int):
  """Batch `index` of an epoch, gathered on the device from the resident uint8 split."""
  idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
  return {"image": to_float(images[idx]), "label": labels[idx]}


def padded_batches(split: Split, batch_size: int) -> Dict[str, np.ndarray]:
  """The whole split as [num_batches, batch_size, ...] with a mask over the zero padding."""
  n = len(split.labels)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
  labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
  mask = np.arange(num_batches * batch_size) < n
  shape = (num_batches, batch_size)
  return {"image": images.reshape(shape + split.images.shape[1:]),
          "label": labels.reshape(shape), "mask": mask.reshape(shape)}
