"""The README's model table, generated from the registry (never typed by hand).

``python -m converters.model_table`` prints it; ``--write README.md`` replaces the
block between ``<!-- models:begin -->`` and ``<!-- models:end -->``. Per family:
the models, each model's input size (its DEFAULT weights' transforms: crop size),
its activation calls as the reference keys them, and its functional calls
(``F.relu``-style, scored only with ``functional=True``). Call counts come from
tracing the Flax port abstractly (``jax.eval_shape``: no weights, no compute).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from affjax import capture, models
from affjax.models import layers, registry
from converters import weights as weights_lib

__all__ = ["BEGIN", "END", "rows", "table", "write"]

BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"


def _input_size(name: str) -> int:
    crop = weights_lib.resolve(name, None).transforms().crop_size
    return int(crop[0] if isinstance(crop, list | tuple) else crop)


def rows() -> list[dict]:
    """One row per registered model: family, name, input size, call counts."""
    out = []
    for spec in registry.specs():
        size = _input_size(spec.name)
        module = models.get_model(spec.name, **_config(spec.name, size))
        order = capture.call_order(module, (1, size, size, 3))
        out.append(
            {
                "family": spec.family,
                "name": spec.name,
                "size": size,
                # reference keys: a ReLU6 call is keyed as Hardtanh and ReLU6
                "calls": sum(len(layers.reference_classes(o[1])) for o in order if not o[2]),
                "functional": sum(1 for o in order if o[2]),
                "functional_only": spec.functional_only,
            }
        )
    return out


def _config(name: str, size: int) -> dict:
    # Models with position embeddings are built for their input size.
    module = models.get_model(name)
    return {"image_size": size} if hasattr(module, "image_size") else {}


def table(data: list[dict] | None = None) -> str:
    """Markdown table, one line per family (sizes and counts listed per model)."""
    data = rows() if data is None else data
    lines = [
        "| family | models | input size (px) | activation calls | functional calls |",
        "|---|---|---|---|---|",
    ]
    for family in dict.fromkeys(r["family"] for r in data):
        group = [r for r in data if r["family"] == family]

        def col(key, group=group):
            values = [str(r[key]) for r in group]
            return values[0] if len(set(values)) == 1 else " / ".join(values)

        names = ", ".join(r["name"] + (" *" if r["functional_only"] else "") for r in group)
        lines.append(
            f"| {family} | {names} | {col('size')} | {col('calls')} | {col('functional')} |"
        )
    return "\n".join(lines)


def write(readme: Path, text: str) -> None:
    content = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", type=Path, help="README to update in place")
    args = p.parse_args(argv)
    text = table()
    if args.write:
        write(args.write, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
