"""A run's folder: config.json written atomically and read back with today's defaults."""

import os

import pytest

from fmnist_jax import errors
from fmnist_jax import run_folder


def test_config_saved_before_newer_fields_takes_their_defaults(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": 7, "data": {"dataset": "fashion_mnist", "manual_dir": "/m"}}')
  config = run_folder.load_config(str(tmp_path))
  assert config.seed == 7 and config.data.manual_dir == "/m"  # Saved values win ...
  assert config.data.source == "auto" and config.runtime.pool_impl == "auto"  # ... missing ones are base.py's.
  assert config.batch_size == run_folder.default_config().batch_size


def test_shipped_pretrained_config_loads_whole():
  config = run_folder.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "pretrained"))
  assert set(json_keys(run_folder.default_config())) <= set(json_keys(config))


def json_keys(config, prefix=""):
  for key, value in config.items():
    yield from json_keys(value, f"{prefix}{key}.") if hasattr(value, "items") else [prefix + key]


def test_config_that_is_not_an_object_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(errors.CheckpointError, match="not a config"):
    run_folder.load_config(str(tmp_path))
