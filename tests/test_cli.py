"""The affjax command end to end, offline, on random data."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from affjax import cli
from affjax.models import list_models

# the module, not the function affjax re-exports under the same name
signature_lib = importlib.import_module("affjax.signature")

BASE = [
    "signature",
    "resnet18",
    "--weights",
    "random",
    "--dataset",
    "random",
    "--batch-size",
    "4",
    "--num-random",
    "8",
    "--metrics",
    "aff_score",
    "sparsity_after",
    "--quiet",
]


def test_signature_run_writes_csv_json_png(tmp_path, capsys):
    assert cli.main([*BASE, "--out", str(tmp_path)]) == 0
    stem = tmp_path / "resnet18_random_4_0"
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["schema"] == "affjax.signature/1"
    meta = payload["meta"]
    assert meta["model"] == "resnet18" and meta["info"]["weights"] == "random"
    assert meta["info"]["total_params"] == 11689512 and meta["info"]["depth"] == 68
    assert {"jax", "device", "backend"} <= set(meta["provenance"])
    assert len(payload["records"]) == 17
    assert all(0 < r["aff_score"] <= 1 for r in payload["records"])
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert stem.with_suffix(".csv").read_text().count("\n") == 18
    assert not list(tmp_path.glob(".*partial"))  # cleaned up after a complete run


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    real = signature_lib.signature
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(signature_lib, "signature", flaky)
    argv = [*BASE, "--batch-id", "-1", "--out", str(tmp_path)]
    assert cli.main(argv) == 130  # batch 0 done, interrupted in batch 1
    assert len(list(tmp_path.glob(".*partial/batch_*.json"))) == 1
    calls.clear()
    monkeypatch.setattr(
        signature_lib, "signature", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    assert cli.main(argv) == 0
    assert len(calls) == 1  # only the missing batch was computed
    records = json.loads((tmp_path / "resnet18_random_4_-1.json").read_text())["records"]
    assert [r["batch"] for r in records] == [0] * 17 + [1] * 17


@pytest.mark.parametrize(
    "argv,message",
    [
        (["signature", "resnet81", "--weights", "random"], "unknown model 'resnet81'"),
        (
            ["signature", "resnet18", "--weights", "random", "--out", "/proc/forbidden"],
            "cannot write to output directory",
        ),
        (
            [
                "signature",
                "resnet18",
                "--weights",
                "random",
                "--dataset",
                "cifar10",
                "--data-dir",
                "{tmp}/none",
            ],
            "--download",
        ),
        (["signature", "resnet18", "--weights", "IMAGENET1K_V1"], "--weights random"),
        (
            [
                "signature",
                "resnet18",
                "--weights",
                "random",
                "--batch-size",
                "4",
                "--num-random",
                "8",
                "--batch-id",
                "5",
            ],
            "batch 5 does not exist",
        ),
    ],
)
def test_user_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("affjax: error:") and message in err[0]


def test_models_and_demo(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    # one line per family, "family name name ...": every registered model, once
    listed = [name for line in out.splitlines() for name in line.split()[1:]]
    assert sorted(listed) == sorted(list_models())
    assert cli.main(["score-demo"]) == 0
    assert "x^41" in capsys.readouterr().out


def test_affjax_never_imports_torch():
    code = (
        "import sys, affjax, affjax.cli, affjax.signature, affjax.models, affjax.checkpoint;"
        "affjax.cli.main(['models']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_convert_then_torch_free_signature(tmp_path):
    variables = tmp_path / "r18.msgpack"
    assert cli.main(["convert", "resnet18", "--weights", "random", "--out", str(variables)]) == 0
    images = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "batch.npy", images)
    argv = [
        "signature",
        "--variables",
        str(variables),
        "--images",
        str(tmp_path / "batch.npy"),
        "--batch-size",
        "3",
        "--batch-id",
        "-1",
        "--metrics",
        "aff_score",
        "--quiet",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 0
    payload = json.loads((tmp_path / "out" / "resnet18_batch_3_-1.json").read_text())
    assert [r["batch"] for r in payload["records"]] == [0] * 17 + [1] * 17
    # the same numbers as the Python API on the same images and variables
    from affjax.checkpoint import load_variables

    _, module, v, _ = load_variables(variables)
    want = signature_lib.signature(module, v, images[3:], metrics=("aff_score",)).scores()
    got = [r["aff_score"] for r in payload["records"][17:]]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
