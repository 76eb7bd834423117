"""Event writers: CLU's or the TF-free one, whichever a process can use, both read by TensorBoard."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO

# In one process: a TF-free writer first (TensorFlow not loaded: tensorboard gets its stub), then
# TensorFlow loaded (as TFDS does), then another writer. tensorboard's summaries keep using the stub,
# so that writer must not be CLU's (its summaries would fail asynchronously).
_SCRIPT = textwrap.dedent("""
    import sys
    from fmnist_jax import plotting, writers
    first = writers.create_writer(sys.argv[1] + "/a")
    first.write_scalars(1, {"loss": 1.0}); first.close()
    import tensorflow  # noqa: F401
    second = writers.create_writer(sys.argv[1] + "/b")
    second.write_scalars(2, {"loss": 0.5}); second.flush(); second.close()
    for name, step, value in (("a", 1, 1.0), ("b", 2, 0.5)):
      series = plotting.read_scalars(sys.argv[1] + "/" + name)["loss"]
      assert list(series.steps) == [step] and list(series.values) == [value], (name, series)
    print("ok", type(second).__name__)
""")


def test_a_writer_after_tensorflow_loads_late_still_writes(tmp_path):
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env={"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["ok", "EventFileWriter"], proc.stdout
