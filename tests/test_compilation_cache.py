"""The persistent compilation cache is on by default for the API, and yields to the user's own.

Each case runs in a fresh process (JAX decides per process whether the cache is
used) and counts JAX's own persistent-cache events.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A small Flax model scored through the public API; nothing needs torch.
_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.monitoring as m
    import flax.linen as nn
    import numpy as np

    events = []
    m.register_event_listener(lambda e, **k: events.append(e))

    import affjax

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = affjax.site(nn.relu)(nn.Dense(16)(x))
            return nn.Dense(4)(affjax.site(nn.tanh)(nn.Dense(16)(x)))

    mode = sys.argv[1]
    if mode == "user":
        jax.config.update("jax_compilation_cache_dir", sys.argv[2])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if mode == "compiled-before":
        jax.jit(lambda a: a * 2)(np.ones(3))  # JAX has decided on the cache before affjax runs
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    model = Mlp()
    variables = model.init(jax.random.key(0), x)
    sig = affjax.signature(model, variables, x, metrics=("aff_score",))
    assert len(sig.records()) == 2
    hits = sum(e.endswith("cache_hits") for e in events)
    print("DIR", jax.config.jax_compilation_cache_dir)
    print("HITS", hits)
    """
)


def _run(tmp_path, mode="default", *args, cache_env=None):
    env = {k: v for k, v in os.environ.items() if k != "AFFJAX_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    if cache_env is not None:
        env["AFFJAX_CACHE_DIR"] = cache_env
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line[:4] in ("DIR ", "HITS"))
    return lines["DIR"], int(lines["HITS"])


@pytest.mark.parametrize("mode", ["default", "compiled-before"])
def test_signature_turns_the_cache_on_by_default(tmp_path, mode):
    where = str(tmp_path / "xdg" / "affjax" / "jax")
    assert _run(tmp_path, mode) == (where, 0)  # cold: compiles and writes
    # The score kernels are cached too: no host callback inside them (JAX never
    # writes an executable that has one).
    assert {"_forward", "_score_group"} <= {
        name.split("-")[0].removeprefix("jit_") for name in os.listdir(where)
    }
    dir_, hits = _run(tmp_path, mode)
    assert dir_ == where and hits >= 1  # the second process reads the score kernels from disk


def test_off_and_user_directories_are_respected(tmp_path):
    assert _run(tmp_path, cache_env="off") == ("None", 0)
    assert not (tmp_path / "xdg").exists()
    mine = str(tmp_path / "mine")
    assert _run(tmp_path, "user", mine)[0] == mine  # the user's directory, not ours
    assert not (tmp_path / "xdg").exists()
    assert _run(tmp_path, "user", mine)[1] >= 1
