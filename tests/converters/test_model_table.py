"""The README's model table is generated from the registry and kept current."""

from optional import skip_module_without_torch

skip_module_without_torch()

import re
from pathlib import Path

import pytest

from affjax.models import registry
from converters import model_table

README = Path(__file__).parents[2] / "README.md"


def _block() -> str:
    text = README.read_text()
    match = re.search(
        re.escape(model_table.BEGIN) + r"\n(.*?)\n" + re.escape(model_table.END), text, re.S
    )
    assert match, "README lacks the generated model table block"
    return match.group(1)


def test_readme_lists_every_registered_model_once():
    names = re.findall(r"[a-z][a-z0-9_]+", " ".join(
        line.split("|")[2] for line in _block().splitlines()[2:]
    ))  # fmt: skip
    assert sorted(names) == sorted(registry.list_models())


@pytest.mark.slow
def test_readme_table_is_current():
    # traces every model abstractly (a few minutes): the counts and sizes too
    assert _block() == model_table.table()
