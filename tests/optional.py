"""Markers for tests that need the ``[torch]`` extra (torch, torchvision, POT, scikit-learn).

``pip install -e .`` alone must still collect and run every other test; these
are skipped there with the reason below.
"""

import importlib.util

import pytest

HAVE_TORCH_EXTRA = all(
    importlib.util.find_spec(m) is not None for m in ("torch", "torchvision", "ot", "sklearn")
)
REASON = "needs the [torch] extra: pip install -e '.[torch]'"
requires_torch = pytest.mark.skipif(not HAVE_TORCH_EXTRA, reason=REASON)


def skip_module_without_torch() -> None:
    """Skips the calling test module (at import) when the extra is missing."""
    if not HAVE_TORCH_EXTRA:
        pytest.skip(REASON, allow_module_level=True)
