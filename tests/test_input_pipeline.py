"""Data sources agree, bad data is named, and device-side batching is derived and complete."""

import gzip
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from fmnist_jax import errors
from fmnist_jax import input_pipeline
from tests.conftest import data_dir


def _data_config(**kw):
  config = dict(source="auto", data_dir=None, manual_dir=None, idx_dirs=())
  config.update(kw)
  return ml_collections.ConfigDict(config)


@pytest.mark.slow
def test_tfds_with_manual_dir_and_idx_give_identical_arrays(manual_dir, tmp_path, fmnist):
  tfds_data = input_pipeline.load_dataset(_data_config(
      source="tfds", data_dir=str(tmp_path / "tfds"), manual_dir=manual_dir))
  for split in ("train", "test"):
    np.testing.assert_array_equal(tfds_data[split].images, fmnist[split].images)
    np.testing.assert_array_equal(tfds_data[split].labels, fmnist[split].labels)
  assert fmnist["train"].images.shape == (60000, 28, 28, 1) and fmnist["train"].images.dtype == np.uint8
  assert fmnist["test"].labels.shape == (10000,)
  assert np.bincount(fmnist["test"].labels).tolist() == [1000] * 10


def _parsed_by_hand(folder: str, stem: str) -> input_pipeline.Split:
  """An IDX pair read without the library: a 16-byte header before the images, 8 before the labels."""
  with gzip.open(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
  with gzip.open(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return input_pipeline.Split(images, labels)


def test_idx_reader_of_manual_dir_matches_the_archives_parsed_by_hand(manual_dir):
  data = input_pipeline.load_dataset(_data_config(source="idx", manual_dir=manual_dir))
  for split, stem, size in (("train", "train", 60_000), ("test", "t10k", 10_000)):
    expected = input_pipeline.canonical_order(_parsed_by_hand(manual_dir, stem))
    assert len(expected.labels) == size
    np.testing.assert_array_equal(data[split].images, expected.images)
    np.testing.assert_array_equal(data[split].labels, expected.labels)


def test_nothing_found_names_every_place_tried_and_the_fix(tmp_path):
  with pytest.raises(errors.DataError) as info:
    input_pipeline.load_dataset(_data_config(source="idx", idx_dirs=(str(tmp_path / "a"), str(tmp_path / "b"))))
  message = str(info.value)
  assert str(tmp_path / "a") in message and str(tmp_path / "b") in message
  assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message
  assert "network" not in message  # data.source=idx never downloads.


def test_truncated_idx_file_is_reported(tmp_path):
  for name in os.listdir(data_dir()):
    shutil.copy(os.path.join(data_dir(), name), tmp_path / name)
  raw = gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz").read()
  with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(raw[:-10])
  with pytest.raises(errors.DataError, match="truncated IDX file"):
    input_pipeline.load_idx_dir(str(tmp_path))


def test_epoch_permutation_is_derived_from_key_and_epoch():
  key = jax.random.PRNGKey(3)
  p0 = np.asarray(input_pipeline.epoch_permutation(key, 0, 1000))
  assert sorted(p0.tolist()) == list(range(1000))
  np.testing.assert_array_equal(p0, input_pipeline.epoch_permutation(key, 0, 1000))
  assert not np.array_equal(p0, input_pipeline.epoch_permutation(key, 1, 1000))


def test_gather_batch_scales_to_unit_interval_and_follows_the_permutation(fmnist):
  images, labels = fmnist["test"].images, fmnist["test"].labels
  perm = np.arange(len(labels))[::-1].copy()
  batch = input_pipeline.gather_batch(images, labels, perm, 2, 5)
  idx = perm[10:15]
  np.testing.assert_allclose(batch["image"], images[idx] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(batch["label"], labels[idx])
  assert float(batch["image"].max()) <= 1.0 and float(batch["image"].min()) >= 0.0


def test_padded_batches_cover_the_split_once_with_a_mask(fmnist):
  split = input_pipeline.Split(fmnist["test"].images[:2500], fmnist["test"].labels[:2500])
  batches = input_pipeline.padded_batches(split, 1000)
  assert batches["image"].shape == (3, 1000, 28, 28, 1)
  assert int(batches["mask"].sum()) == 2500
  np.testing.assert_array_equal(batches["label"].reshape(-1)[:2500], split.labels)
