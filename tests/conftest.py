"""Makes the shared test helpers (``tests/parity_helpers.py``) importable from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

try:
    import torch
except ImportError:  # torch-free environments run the JAX-only tests
    torch = None

if torch is not None:
    # torch's LAPACK calls (eigh in the reference) slow down by 10-30x when their
    # threads compete with XLA's on a 2-core machine; one thread is the fast setting.
    torch.set_num_threads(1)
