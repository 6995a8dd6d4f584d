"""Shared test helpers (``tests/parity_helpers.py``) importable from every folder; the user's
converted-weights cache kept out of tests."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Tests never read or fill the user's converted-weights cache (~/.cache/affjax/weights):
# a stale user entry must not decide a test, nor a test leave 45 MB there. The cache's
# own tests (tests/converters/test_cache.py, tests/test_cli.py) pass their own folders.
os.environ["AFFJAX_WEIGHTS_CACHE_DIR"] = "off"

try:
    import torch
except ImportError:  # torch-free environments run the JAX-only tests
    torch = None

if torch is not None:
    # torch's LAPACK calls (eigh in the reference) slow down by 10-30x when their
    # threads compete with XLA's on a 2-core machine; one thread is the fast setting.
    torch.set_num_threads(1)
