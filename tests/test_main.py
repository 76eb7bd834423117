"""The command line end to end on real Fashion-MNIST: train, resume, TensorBoard files, errors."""

import os
import subprocess
import sys

import pytest

from fmnist_jax import errors
from tests.conftest import REPO, run_module
from tests.test_train import read_scalars

NO_TF = {"PYTHONPATH": os.pathsep.join([os.path.join(REPO, "tests", "no_tensorflow"), REPO])}
# A narrower CNN than the base one keeps this test to about a minute on 2 CPU cores.
SMALL = ["--config.model.conv_features=(32, 32)", "--config.model.dense_features=256"]


def _main(workdir, *flags, env=None):
  return run_module(["-m", "fmnist_jax.main", "--config=experiments/base.py", f"--workdir={workdir}",
                     "--config.eval_every_steps=40", "--config.checkpoint_every_steps=40", *SMALL, *flags],
                    env=env)


@pytest.mark.slow
def test_train_then_resume_with_tfds_manual_dir(tmp_path, manual_dir):
  workdir = str(tmp_path / "run")
  data = [f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={tmp_path / 'tfds'}"]
  first = _main(workdir, "--config.num_train_steps=80", *data)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "training starts from scratch" in first.stderr
  second = _main(workdir, "--config.num_train_steps=120", *data)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming from step 80" in second.stderr
  evals = read_scalars(os.path.join(workdir, "eval"))
  for tag in ("loss", "accuracy", "precision", "recall"):
    assert sorted(evals[tag]) == [40, 80, 120], tag
  assert evals["accuracy"][80] >= 0.70
  assert evals["accuracy"][120] >= evals["accuracy"][40]
  trains = read_scalars(os.path.join(workdir, "train"))
  for tag in ("loss", "accuracy", "precision", "recall", "steps_per_sec"):
    assert 120 in trains[tag], tag
  third = _main(workdir, "--config.num_train_steps=120", *data)
  assert third.returncode == 0 and "Training already finished at step 120" in third.stderr


@pytest.mark.slow
def test_training_without_tensorflow_writes_the_same_event_files(tmp_path, manual_dir):
  workdir = str(tmp_path / "run")
  result = _main(workdir, "--config.num_train_steps=40", f"--config.data.manual_dir={manual_dir}",
                 "--config.model.conv_features=(8, 8)", "--config.model.dense_features=32", env=NO_TF)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "IDX files in data.manual_dir" in result.stderr
  assert sorted(read_scalars(os.path.join(workdir, "eval"))["precision"]) == [40]
  assert 40 in read_scalars(os.path.join(workdir, "train"))["steps_per_sec"]


@pytest.mark.slow
def test_compilation_cache_lets_a_second_run_compile_nothing_new(tmp_path):
  cache = tmp_path / "xla_cache"
  tiny = ["--config.num_train_steps=2", "--config.model.conv_features=(8, 8)", "--config.model.dense_features=32",
          f"--config.runtime.compilation_cache_dir={cache}"]
  first = _main(str(tmp_path / "first"), *tiny)
  assert first.returncode == 0, first.stderr[-3000:]
  entries = sorted(os.listdir(cache))
  for program in ("jit_train_steps", "jit_epoch_permutation"):  # The latter compiles in well under a second.
    assert any(e.startswith(program) for e in entries), entries
  second = _main(str(tmp_path / "second"), *tiny)
  assert second.returncode == 0, second.stderr[-3000:]
  assert sorted(os.listdir(cache)) == entries  # Every program came from the cache.


@pytest.mark.parametrize("flags, expected", [
    (["--config=experiments/base.py"], "--workdir"),
    (["--workdir=x"], "--config"),
    (["--config=experiments/missing.py", "--workdir=x"], "experiments/missing.py"),
    (["--config=experiments/base.py", "--workdir=x", "--config.data.manual_dir=/no/such/dir"], "/no/such/dir"),
    (["--config=experiments/base.py", "--workdir=x", "--config.batch_size=0"], "config.batch_size=0"),
    (["--config=experiments/base.py", "--workdir=/proc/forbidden"], "/proc/forbidden"),
])
@pytest.mark.slow
def test_entry_point_errors_are_one_line(flags, expected):
  result = run_module(["-m", "fmnist_jax.main", *flags], env=NO_TF)
  assert result.returncode == errors.EXIT_USER_ERROR
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def _run_in(folder, args):
  """`python -m ARGS` with `folder` as the current folder."""
  return subprocess.run([sys.executable, "-m", *args], cwd=folder, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **NO_TF})


@pytest.mark.parametrize("args", [
    ["fmnist_jax.main", f"--config={REPO}/experiments/base.py", "--workdir="],
    ["fmnist_jax.main", f"--config={REPO}/experiments/base.py", "--workdir=  "],
    ["fmnist_jax.sweep", f"--config={REPO}/experiments/base.py", "--workdir=",
     f"--sweep={REPO}/experiments/sweeps/lr.py"],
    ["fmnist_jax.evaluate", "--workdir= "],
    ["fmnist_jax.predict", "--workdir=", f"{REPO}/test_imgs/0.png"],
    ["fmnist_jax.plot", "--workdir=\t"],
], ids=lambda args: args[0].split(".")[1])
def test_an_empty_workdir_is_one_line_and_writes_nothing(tmp_path, args):
  result = _run_in(tmp_path, args)
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert "--workdir is empty" in line and "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)


PRINT_CONFIG = ("import sys\nfrom fmnist_jax import main\nmain.parse_flags(sys.argv)\nc = main.FLAGS.config\n"
                "print(c.model.conv_features, c.model.kernel_size, c.seed, c.runtime.halt_on_nan, c.model.activation)")


def test_a_repeated_config_flag_takes_its_last_value_for_every_type():
  result = run_module(["-c", PRINT_CONFIG, "--config=experiments/base.py", "--workdir=x",
                       "--config.model.conv_features=(8,8)", "--config.model.conv_features=(4,)",
                       "--config.model.kernel_size=(3,3)", "--config.model.kernel_size", "()",
                       "--config.seed", "3", "--config.seed=4",
                       "--config.runtime.halt_on_nan", "--noconfig.runtime.halt_on_nan",
                       "--config.model.activation=relu", "--config.model.activation", "gelu"], env=NO_TF)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["(4,)", "()", "4", "False", "gelu"]


@pytest.mark.parametrize("text, expected", [
    ("def get_config(:\n", "cannot be loaded (SyntaxError: invalid syntax"),
    ("CONFIG = 1\n", "has no get_config()"),
    ("def helper():\n  raise ValueError('the real cause')\ndef get_config():\n  return helper()\n",
     "get_config() failed (ValueError: the real cause)"),
    ("def get_config():\n  return {'seed': 1}\n", "get_config() returned dict"),
])
def test_a_broken_config_file_is_one_line_naming_its_cause(tmp_path, text, expected):
  (tmp_path / "config.py").write_text(text)
  result = run_module(["-m", "fmnist_jax.main", f"--config={tmp_path}/config.py", "--workdir=x"], env=NO_TF)
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert expected in line and f"--config={tmp_path}/config.py" in line and "Traceback" not in result.stderr


def test_extra_arguments_are_one_line_and_help_exits_0_listing_the_config_fields():
  result = run_module(["-m", "fmnist_jax.main", "--config=experiments/base.py", "--workdir=x", "extra"], env=NO_TF)
  assert result.returncode == errors.EXIT_USER_ERROR
  assert result.stderr.strip().splitlines() == ["error: unexpected arguments extra; every setting is a --flag "
                                                "(see --help)"]
  result = run_module(["-m", "fmnist_jax.main", "--help"], env=NO_TF)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--config.model.conv_features=(64, 64)" in result.stdout and "--workdir" in result.stdout


PRINT_MODEL = ("import sys\nfrom fmnist_jax import config_checks, main\nmain.parse_flags(sys.argv)\n"
               "config_checks.validate(main.FLAGS.config)\nprint(sorted(main.FLAGS.config.model.items()))")


@pytest.mark.parametrize("flags, expected", [
    (["--config=experiments/base.py", "--config.model.name=resnet", "--config.model.stage_features=(8, 16)",
      "--config.model.stage_strides", "(1, 2)", "--config.model.blocks_per_stage=(1,1)",
      "--noconfig.model.batch_norm"],
     {"name": "resnet", "stage_features": (8, 16), "stage_strides": (1, 2), "blocks_per_stage": (1, 1),
      "batch_norm": False, "stem_features": 16, "activation": "relu"}),
    (["--config=experiments/best.py:cpu", "--config.model.conv_features=(8,)", "--config.model.name", "cnn"],
     {"name": "cnn", "conv_features": (8,), "dense_features": 1024, "activation": "elu"}),
    (["--config=experiments/best.py:cpu", "--config.model.stage_features=(8, 16, 32)"],  # No switch: as before.
     {"name": "resnet", "stage_features": (8, 16, 32), "stem_features": 16}),
    (["--config=experiments/base.py", "--config.model.conv_features=(8,)"], {"name": "cnn", "conv_features": (8,)}),
])
def test_a_flag_switches_the_model_family_with_its_own_fields(flags, expected):
  result = run_module(["-c", PRINT_MODEL, "--workdir=x", *flags], env=NO_TF)
  assert result.returncode == 0, result.stderr[-2000:]
  model = dict(eval(result.stdout))  # pylint: disable=eval-used  # Our own printout.
  assert {k: model[k] for k in expected} == expected
  from fmnist_jax import model_families  # pylint: disable=g-import-not-at-top
  assert set(model) == set(model_families.fields(expected["name"]))


@pytest.mark.parametrize("flags, expected", [
    (["--config=experiments/base.py", "--config.model.name=resnet", "--config.model.conv_features=(8,)"],
     "config.model.conv_features is not a field of model.name='resnet' (a field of model.name='cnn')"),
    (["--config=experiments/base.py", "--config.model.name=resnet", "--config.model.stem_features=wide"],
     "config.model.stem_features"),
    (["--config=experiments/base.py:cpu"], "experiments/base.py takes no variant; drop ':cpu'"),
    (["--config=experiments/best.py:foo"], "has no variant 'foo'; its variants: --config=experiments/best.py:gpu"),
])
def test_family_and_variant_mistakes_are_one_line(tmp_path, flags, expected):
  result = run_module(["-m", "fmnist_jax.main", f"--workdir={tmp_path / 'run'}", *flags], env=NO_TF)
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert expected in line and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def test_a_config_path_holding_a_colon_loads_with_and_without_a_variant(tmp_path):
  folder = tmp_path / "a:b"
  folder.mkdir()
  for name in ("base", "best"):
    (folder / f"my:{name}.py").write_text(open(os.path.join(REPO, "experiments", f"{name}.py")).read())
  for spec, family in ((f"{folder}/my:base.py", "cnn"), (f"{folder}/my:best.py:cpu", "resnet")):
    result = run_module(["-c", PRINT_MODEL, "--workdir=x", f"--config={spec}"], env=NO_TF)
    assert result.returncode == 0, result.stderr[-2000:]
    assert dict(eval(result.stdout))["name"] == family  # pylint: disable=eval-used


def test_help_describes_workdir_and_lists_the_fields_of_the_given_config_with_allowed_values():
  for module in ("fmnist_jax.main", "fmnist_jax.sweep"):
    result = run_module(["-m", module, "--help", "--config=experiments/best.py:cpu"], env=NO_TF)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--workdir: The " in result.stdout, result.stdout
    assert "--config.model.stage_features=(32, 64, 128)" in result.stdout
    assert "--config.model.conv_features=" not in result.stdout
    assert "--config.optimizer='muon'  (one of: adam, adamw, sgd, muon)" in result.stdout
    assert "--config.model.name=cnn replaces the model fields with its own: activation='elu'" in result.stdout


REPORT_TENSORFLOW = ("import atexit, sys\n"
                     "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules,\n"
                     "                              file=sys.stderr))\n"
                     "from fmnist_jax import main\nmain.run()\n")
CHATTER = ("libtpu", "InitializeLog", "oneDNN", "fontManager", "transition_steps", "variant", "orbax")


@pytest.mark.slow
def test_a_run_prints_what_the_user_needs_and_no_library_chatter(tmp_path):
  """TensorFlow is installed here, yet a data.source=idx run never imports it; a warmup that rounds to 0
  steps does not make optax warn; the final evaluation is one line."""
  result = run_module(["-c", REPORT_TENSORFLOW, "--config=experiments/base.py", f"--workdir={tmp_path / 'run'}",
                       "--config.model.conv_features=(8, 8)", "--config.model.dense_features=32",
                       "--config.num_train_steps=20", "--config.log_every_steps=10", "--config.eval_every_steps=10",
                       "--config.data.source=idx", "--config.schedule=warmup_linear",
                       "--config.warmup_fraction=0.01"])
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == "tensorflow imported: False", result.stderr
  assert not [line for line in lines if any(word in line for word in CHATTER)], result.stderr
  messages = [line.split("] ", 1)[1] for line in lines[:-1]]
  expected = ["Runtime: ", "Fashion-MNIST loaded from IDX files in ", "No checkpoint in ", "Training 20 steps",
              "step 10/20 |", "eval at step 10: ", "step 20/20 |", "Final evaluation at step 20: "]
  assert len(messages) == len(expected) and all(m.startswith(e) for m, e in zip(messages, expected)), messages
  assert "(data.source=idx)" in messages[1]
