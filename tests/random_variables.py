"""Random Flax variables without compiling ``module.init`` (threefry per leaf is slow on CPU)."""

import jax
import numpy as np


def random_variables(module, image_shape, rng: np.random.Generator, scale: float = 0.1) -> dict:
    """``params`` and ``batch_stats`` of ``module`` for NHWC inputs of ``image_shape``.

    Standard-normal leaves times ``scale``; BatchNorm variances ``|v| + 0.5``.
    """
    shapes = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct(tuple(image_shape), "float32")
    )

    def fill(path, leaf):
        value = scale * rng.standard_normal(leaf.shape).astype(np.float32)
        return np.abs(value) + 0.5 if path[-1].key == "var" else value

    return {k: jax.tree_util.tree_map_with_path(fill, shapes[k]) for k in ("params", "batch_stats")}
