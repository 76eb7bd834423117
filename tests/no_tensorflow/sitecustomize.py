"""On PYTHONPATH, makes a Python process behave as on a host without TensorFlow (like the GPU hosts).

tests/test_reliability.py runs its training subprocesses this way: importing TensorFlow would
cost each of them seconds, and the TF-free code paths are the ones accelerator hosts run.
"""

import sys

sys.modules["tensorflow"] = None  # importlib.util.find_spec("tensorflow") → None; import → ImportError.
