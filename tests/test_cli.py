"""The affjax command end to end, offline, on random data."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from optional import requires_torch

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


@requires_torch
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


@requires_torch
def test_sites_scores_chosen_modules_into_their_own_files(tmp_path):
    argv = [*BASE, "--sites", "layer1_0", "layer1_1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    stem = tmp_path / "resnet18_random_4_0_sites-layer1_0-layer1_1"
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["meta"]["sites"] == ["layer1_0", "layer1_1"]
    # whole residual blocks, keyed by their Flax paths
    assert [r["layer"] for r in payload["records"]] == ["layer1_0", "layer1_1"]
    assert [r["kind"] for r in payload["records"]] == ["BasicBlock", "BasicBlock"]
    assert all(r["status"] == "ok" and r["d"] == 64 for r in payload["records"])
    assert not (tmp_path / "resnet18_random_4_0.json").exists()  # default output untouched


@requires_torch
def test_functional_only_model_writes_empty_outputs_with_a_note(tmp_path, capsys):
    # GoogLeNet's activations are all F.relu: the reference's signature is
    # empty, and so is ours by default; the run says so and succeeds.
    argv = [*BASE[:1], "googlenet", *BASE[2:], "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "affjax: note: empty signature" in err and "--functional" in err
    stem = tmp_path / "googlenet_random_4_0"
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["records"] == [] and "F.relu" in payload["meta"]["note"]
    assert stem.with_suffix(".csv").exists() and stem.with_suffix(".png").exists()


@requires_torch
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


@requires_torch
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


@requires_torch
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


@requires_torch
def test_signature_converts_once_then_runs_from_the_weights_cache(tmp_path, monkeypatch):
    import os

    weights = tmp_path / "weights"
    monkeypatch.setenv("AFFJAX_WEIGHTS_CACHE_DIR", str(weights))
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "batch.npy", images)
    argv = [
        "signature", "resnet18", "--weights", "random", "--images", str(tmp_path / "batch.npy"),
        "--batch-size", "4", "--metrics", "aff_score", "--quiet",
    ]  # fmt: skip
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0  # converts, fills the cache
    assert len(list(weights.glob("resnet18-*.variables"))) == 1
    # A second process reads the converted weights: no torch, the same records.
    code = (
        "import sys; from affjax import cli; rc = cli.main(sys.argv[1:]);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv, "--out", str(tmp_path / "b")],
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "resnet18_batch_4_0.json").read_text()) for d in "ab")
    assert a["meta"]["info"] == b["meta"]["info"] and a["meta"]["info"]["depth"] == 68
    assert [r["aff_score"] for r in a["records"]] == [r["aff_score"] for r in b["records"]]
    assert len(a["records"]) == 17


# --------------------------------------------------------------------------- torch-free runs


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory):
    """resnet18 variables (random, made without torch) and 12 images of 32 px, on disk."""

    from random_variables import random_variables

    from affjax.checkpoint import save_variables
    from affjax.models import get_model

    tmp = tmp_path_factory.mktemp("inputs")
    module = get_model("resnet18")
    rng = np.random.default_rng(0)
    variables = random_variables(module, (1, 32, 32, 3), rng)
    save_variables(tmp / "r18.msgpack", "resnet18", module, variables)
    images = rng.normal(size=(12, 32, 32, 3)).astype(np.float32)
    np.save(tmp / "images.npy", images)
    return tmp / "r18.msgpack", tmp / "images.npy"


def _argv(variables, images, out, *extra):
    return [
        "signature", "--variables", str(variables), "--images", str(images),
        "--batch-size", "4", "--batch-id", "-1", "--metrics", "aff_score", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _records(out, images="images"):
    return json.loads((out / f"resnet18_{images}_4_-1.json").read_text())


def test_provenance_records_what_ran(small_inputs, tmp_path):
    from affjax.cli import file_sha256

    variables, images = small_inputs
    assert cli.main(_argv(variables, images, tmp_path)) == 0
    meta = _records(tmp_path)["meta"]
    prov = meta["provenance"]
    assert prov["dtype"] == "float64" and prov["solver"] == "host"  # "auto" resolved on CPU
    assert prov["backend"] == "cpu" and prov["device"]
    assert {"affjax", "jax", "jaxlib", "flax", "numpy", "scipy"} <= set(prov)
    assert prov["images_sha256"] == file_sha256(images)
    assert prov["variables_sha256"] == file_sha256(variables)


def test_changed_input_or_setting_recomputes(small_inputs, tmp_path, monkeypatch):
    variables, images = small_inputs
    real = signature_lib.signature
    calls = []

    def interrupt_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    # same file name, new content: the finished batch 0 must not be reused
    local = tmp_path / "images.npy"
    local.write_bytes(images.read_bytes())
    monkeypatch.setattr(signature_lib, "signature", interrupt_after_one)
    assert cli.main(_argv(variables, local, tmp_path / "out")) == 130
    stale = _records_partial(tmp_path / "out")
    np.save(local, 2.0 * np.load(images))
    calls.clear()
    monkeypatch.setattr(
        signature_lib, "signature", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    assert cli.main(_argv(variables, local, tmp_path / "out")) == 0
    assert len(calls) == 3  # every batch recomputed
    fresh = [r for r in _records(tmp_path / "out")["records"] if r["batch"] == 0]
    assert [r["aff_score"] for r in fresh] != [r["aff_score"] for r in stale]

    # a changed setting recomputes too
    monkeypatch.setattr(signature_lib, "signature", interrupt_after_one)
    calls.clear()
    assert cli.main(_argv(variables, local, tmp_path / "out2")) == 130
    calls.clear()
    monkeypatch.setattr(
        signature_lib, "signature", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    assert cli.main(_argv(variables, local, tmp_path / "out2", "--chunk-size", "2")) == 0
    assert len(calls) == 3


def _records_partial(out):
    (part,) = out.glob(".*partial/batch_00000.json")
    return json.loads(part.read_text())["records"]


@requires_torch
def test_sigkill_then_resume_equals_uninterrupted(small_inputs, tmp_path):
    import os
    import signal
    import time

    variables, images = small_inputs
    whole = tmp_path / "whole"
    assert cli.main(_argv(variables, images, whole)) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "affjax.cli", *_argv(variables, images, killed)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(killed.glob(".*partial/batch_00000.json")):
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "resnet18_images_4_-1.json").exists()
    assert cli.main(_argv(variables, images, killed)) == 0
    assert _records(killed)["records"] == _records(whole)["records"]


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x93not a checkpoint")
    images = tmp_path / "i.npy"
    np.save(images, np.zeros((4, 8, 8, 3), np.float32))
    assert cli.main(_argv(bad, images, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an affjax variables file" in err[0]


def test_nonfinite_images_give_nan_records_and_exit_2(small_inputs, tmp_path, capsys):
    variables, images = small_inputs
    bad = np.load(images)
    bad[5, 0, 0, 0] = np.nan  # batch 1
    np.save(tmp_path / "nan.npy", bad)
    assert cli.main(_argv(variables, tmp_path / "nan.npy", tmp_path / "out")) == 2
    assert "could not be scored" in capsys.readouterr().err
    records = _records(tmp_path / "out", "nan")["records"]
    assert {r["status"] for r in records if r["batch"] == 1} == {"nonfinite"}
    assert all(r["aff_score"] is None for r in records if r["batch"] == 1)  # NaN in JSON
    assert all(r["status"] == "ok" for r in records if r["batch"] != 1)


def test_second_process_reads_the_compilation_cache(small_inputs, tmp_path):
    import os

    variables, images = small_inputs
    # count JAX's persistent-cache hits in a fresh process running the command
    code = (
        "import sys, jax.monitoring as m; hits = [];"
        "m.register_event_listener(lambda e, **k: hits.append(e) if e.endswith('cache_hits') "
        "else None);"
        "from affjax import cli; rc = cli.main(sys.argv[1:]); print('HITS', len(hits)); "
        "sys.exit(rc)"
    )
    argv = [*_argv(variables, images, tmp_path / "out"), "--rerun"]

    def hits(cache):
        env = {**os.environ, "AFFJAX_CACHE_DIR": cache}
        out = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env, check=True, capture_output=True, text=True
        ).stdout
        return int(out.split("HITS")[-1])

    cache = str(tmp_path / "cache")
    assert hits(cache) == 0  # cold: compiles and writes
    assert os.listdir(cache)
    assert hits(cache) >= 1  # warm: the forward pass (at least) comes from disk
    assert hits("off") == 0


@requires_torch
def test_uncertified_calls_and_deprecated_precision(tmp_path, capsys):
    # n = 4 and float32 prices: no gap can reach rtol = 1e-12, so every call is
    # uncertified; the scores are written, the run warns and does not fail.
    argv = [*BASE, "--solver", "auction", "--precision", "float32", "--rtol", "1e-12"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "--precision is deprecated" in err
    assert "status: uncertified 17" in err and "17 call(s) are uncertified" in err
    payload = json.loads((tmp_path / "resnet18_random_4_0.json").read_text())
    assert payload["meta"]["dtype"] == "float32" and payload["meta"]["rtol"] == 1e-12
    assert {r["status"] for r in payload["records"]} == {"uncertified"}
    assert all(r["aff_score"] is not None for r in payload["records"])
    csv = (tmp_path / "resnet18_random_4_0.csv").read_text().splitlines()
    status = csv[0].split(",").index("status")
    assert {line.split(",")[status] for line in csv[1:]} == {"uncertified"}
