"""The signature of a model tracked during training, on a fixed probe batch.

A :class:`Tracker` sits next to a user's training loop and computes
:func:`affjax.signature` every ``every`` steps, keeping one tidy table (one row
per step and call). The forward is jitted once and reused at every step; the
tracker holds no global state, only its own rows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from affjax import reports
from affjax.signature import Signature, signature

__all__ = ["Tracker"]


class Tracker:
    """Signature of ``module`` on ``probe`` every ``every`` training steps.

    Example::

        tracker = Tracker(model, probe_batch, every=100, apply_kwargs={"train": False})
        for step in range(num_steps):
            state = train_step(state, next(batches))          # your jitted step
            tracker.maybe_update(step, {"params": state.params})
        tracker.to_csv("signature_over_training.csv")
        tracker.table()   # (steps, sites, [len(steps), len(sites)] scores)

    Args:
        module: any Flax linen module.
        probe: a fixed batch (any pytree of arrays, batch-leading), the same at
            every step so signatures are comparable; ``n >= 2``.
        every: update when ``step % every == 0``.
        **signature_kwargs: passed to :func:`affjax.signature` (``sites``,
            ``metrics``, ``apply_kwargs``, ``chunk_size``...); ``metrics``
            defaults to ``("aff_score",)``.
    """

    def __init__(self, module: nn.Module, probe: Any, *, every: int = 100, **signature_kwargs):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.module = module
        self.probe = probe
        self.every = every
        self.kwargs = {"metrics": ("aff_score",), **signature_kwargs}
        self._rows: list[dict] = []
        self.meta: dict = {}

    def maybe_update(self, step, variables: Mapping) -> Signature | None:
        """:meth:`update` when ``step`` is a multiple of ``every``; ``None`` otherwise."""
        step = int(step)
        return self.update(step, variables) if step % self.every == 0 else None

    def update(self, step, variables: Mapping) -> Signature:
        """The signature of ``variables`` (``{"params": ..., "batch_stats": ...}``) now."""
        sig = signature(self.module, variables, self.probe, **self.kwargs)
        self.meta = {**sig.meta, "every": self.every}
        self._rows.extend({"step": int(step), **r} for r in sig.records())
        return sig

    def records(self) -> list[dict]:
        """One row per (step, call): ``step``, then the signature's columns."""
        return [dict(r) for r in self._rows]

    def table(self, metric: str = "aff_score") -> tuple[list[int], list[str], np.ndarray]:
        """``(steps, sites, values)``: ``values[i, j]`` is ``metric`` of site j at step i.

        A site is ``"layer"`` or ``"layer#call"`` for a module's later calls.
        """
        steps = list(dict.fromkeys(r["step"] for r in self._rows))
        sites = list(dict.fromkeys(_site(r) for r in self._rows))
        values = np.full((len(steps), len(sites)), np.nan)
        row, col = {s: i for i, s in enumerate(steps)}, {s: j for j, s in enumerate(sites)}
        for r in self._rows:
            values[row[r["step"]], col[_site(r)]] = r[metric]
        return steps, sites, values

    def to_csv(self, path) -> None:
        reports.write_csv(path, self._rows)

    def to_json(self, path) -> None:
        reports.write_json(path, self._rows, {**self.meta, "tracked": "steps"})

    def plot(self, path, metric: str = "aff_score", sites: Sequence[str] | None = None) -> None:
        """``metric`` over steps, one line per site (all of them unless ``sites``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, names, values = self.table(metric)
        fig, ax = plt.subplots(figsize=(7, 4))
        for j, name in enumerate(names):
            if sites is None or name in sites:
                ax.plot(steps, values[:, j], marker=".", lw=1, label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(names) <= 12:
            ax.legend(fontsize=6)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        with reports.atomic_write(path, "wb") as f:
            f.write(buf.getvalue())


def _site(r: dict) -> str:
    return r["layer"] if r["call"] == 0 else f"{r['layer']}#{r['call']}"
