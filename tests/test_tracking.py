"""The signature tracked over a small optax training loop."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import affjax
from affjax import capture as capture_lib
from affjax import signature
from affjax.tracking import Tracker


class _MLP(nn.Module):
    width: int = 16
    act: object = nn.relu

    @nn.compact
    def __call__(self, x):
        x = self.act(nn.Dense(self.width)(x))
        x = self.act(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


def test_tracker_follows_a_training_loop(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    target = np.sin(3 * x[:, :1]) * np.cos(2 * x[:, 1:2])  # a bent function to learn
    probe = x[:64]
    model = _MLP(act=affjax.site(nn.relu))
    params = model.init(jax.random.key(0), x[:2])["params"]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean((model.apply({"params": p}, xb) - yb) ** 2)
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    tracker = Tracker(model, probe, every=20, metrics=("aff_score", "sparsity_after"))
    first = signature(model, {"params": params}, probe, metrics=("aff_score", "sparsity_after"))
    compiled = capture_lib._forward._cache_size()
    losses = []
    for step in range(61):
        tracker.maybe_update(step, {"params": params})
        params, opt_state, loss = train_step(params, opt_state, x, target)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]  # it did train

    steps, sites, values = tracker.table()
    assert steps == [0, 20, 40, 60]
    assert sites == ["relu_0", "relu_1"]
    assert values.shape == (4, 2) and np.all((values > 0) & (values <= 1))
    # step 0 is exactly the signature of the initial parameters
    np.testing.assert_array_equal(values[0], first.scores())
    assert not np.array_equal(values[0], values[-1])  # training moved the signature
    # the module is hashable here: every update reused one compiled forward
    assert capture_lib._forward._cache_size() == compiled
    rows = tracker.records()
    assert len(rows) == 8 and [r["step"] for r in rows[:3]] == [0, 0, 20]
    assert {"layer", "call", "aff_score", "sparsity_after", "status"} <= set(rows[0])

    tracker.to_csv(tmp_path / "t.csv")
    tracker.to_json(tmp_path / "t.json")
    tracker.plot(tmp_path / "t.png")
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("step,index,layer,call")
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["meta"]["every"] == 20 and len(payload["records"]) == 8
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
