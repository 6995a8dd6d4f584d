"""converters.cache: converted weights on disk; a hit equals a conversion and imports no torch."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from optional import requires_torch

from affjax.checkpoint import save_variables
from converters import cache

ROOT = Path(__file__).resolve().parents[2]
NAME = "squeezenet1_1"  # 1.2 M parameters: converted in about a second


def _entries(where: Path) -> list[Path]:
    return sorted(where.glob("*.variables"))


def _images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)


def _logits(loaded) -> np.ndarray:
    return np.asarray(jax.jit(loaded.module.apply)(loaded.variables, _images()))


def _assert_same(got, want) -> None:
    """Name, module, info and every variable (type, dtype, value) exactly equal."""
    assert got.name == want.name and got.module == want.module and got.info == want.info
    assert jax.tree.structure(got.variables) == jax.tree.structure(want.variables)
    for a, b in zip(jax.tree.leaves(got.variables), jax.tree.leaves(want.variables), strict=True):
        assert isinstance(a, jax.Array) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("AFFJAX_WEIGHTS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_dir() == tmp_path / "affjax" / "weights"
    monkeypatch.setenv("AFFJAX_WEIGHTS_CACHE_DIR", str(tmp_path / "w"))
    assert cache.default_dir() == tmp_path / "w"
    for off in ("off", "OFF", "0", "", "none", "false"):
        monkeypatch.setenv("AFFJAX_WEIGHTS_CACHE_DIR", off)
        assert cache.default_dir() is None, off


def test_weights_names_are_keyed_by_the_torchvision_version(monkeypatch):
    # DEFAULT means another file when torchvision changes its default; resolving it would
    # import torchvision, so the name is keyed with the version instead.
    slot, key = cache._key("resnet18", "DEFAULT", 0)
    assert slot == {"model": "resnet18", "weights": "DEFAULT"}
    assert {"torch", "torchvision", "flax", "code", "format"} <= set(key)
    real = cache._version
    monkeypatch.setattr(cache, "_version", lambda p: "9.9" if p == "torchvision" else real(p))
    slot2, key2 = cache._key("resnet18", "DEFAULT", 0)
    assert slot2 == slot and key2["torchvision"] == "9.9" and key2 != key
    assert cache._entry(Path("c"), slot2, key2) != cache._entry(Path("c"), slot, key)
    assert cache._entry(Path("c"), slot2, key2).name.startswith("resnet18-")


@requires_torch
def test_miss_then_hit_equal_a_fresh_conversion(tmp_path):
    from converters.torchvision import load

    fresh = load(NAME, "random", seed=3)
    miss = cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
    hit = cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
    assert (miss.cached, hit.cached) == (False, True) and len(_entries(tmp_path)) == 1
    _assert_same(miss, fresh)
    _assert_same(hit, fresh)
    assert hit.info["weights"] == "random" and hit.info["total_params"] == 1235496
    np.testing.assert_array_equal(_logits(hit), _logits(fresh))


@requires_torch
def test_seed_versions_and_code_each_key_an_entry(tmp_path, monkeypatch):
    a = cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
    b = cache.load(NAME, "random", seed=4, cache_dir=tmp_path)
    assert not b.cached and len(_entries(tmp_path)) == 2  # one entry per seed
    assert not np.array_equal(a.variables["params"]["classifier_1"]["kernel"],
                              b.variables["params"]["classifier_1"]["kernel"])  # fmt: skip
    # Another torch (torchvision's init may change) or other conversion code: a miss,
    # whose entry replaces the seed-3 one instead of adding to it.
    real = cache._version
    monkeypatch.setattr(cache, "_version", lambda p: "0.0" if p == "torch" else real(p))
    assert not cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached
    assert len(_entries(tmp_path)) == 2
    assert cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached
    monkeypatch.setattr(cache, "_code_hash", lambda: "edited")
    assert not cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached
    assert len(_entries(tmp_path)) == 2


@requires_torch
def test_state_dict_file_is_keyed_by_its_contents(tmp_path):
    import torch
    import torchvision

    from converters.torchvision import load

    def save(seed):
        torch.manual_seed(seed)
        torch.save(torchvision.models.get_model(NAME).state_dict(), path)

    path, where = tmp_path / "sq.pt", tmp_path / "cache"
    save(1)
    first = cache.load(NAME, str(path), cache_dir=where)
    assert not first.cached and first.info["weights"] == str(path)
    stat = path.stat()  # touched, same contents: still the same weights
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.load(NAME, str(path), cache_dir=where).cached
    save(2)  # rewritten in place, same size: other weights, never the stale entry
    assert path.stat().st_size == stat.st_size
    second = cache.load(NAME, str(path), cache_dir=where)
    assert not second.cached and len(_entries(where)) == 1
    _assert_same(second, load(NAME, str(path)))
    hit = cache.load(NAME, str(path), cache_dir=where)
    assert hit.cached
    _assert_same(hit, second)


@requires_torch
def test_state_dict_file_is_hashed_again_only_when_it_changes(tmp_path, monkeypatch):
    # Hashing alexnet's 244 MB state dict was 0.3 s of a 0.43 s hit: a hit reuses the
    # hash while the file's stat is the one it was hashed at.
    import torch
    import torchvision

    from converters.torchvision import load

    hashed = []
    real = cache._file_sha256
    monkeypatch.setattr(cache, "_file_sha256", lambda p: hashed.append(p) or real(p))
    path, where = tmp_path / "sq.pt", tmp_path / "cache"

    def save(seed):
        torch.manual_seed(seed)
        torch.save(torchvision.models.get_model(NAME).state_dict(), path)

    save(1)
    time.sleep(cache._RACY_NS / 1e9 + 0.1)  # then its hash may be reused
    first = cache.load(NAME, str(path), cache_dir=where)
    assert not first.cached and len(hashed) == 1
    (memo,) = where.glob("*.sha256")
    hit = cache.load(NAME, str(path), cache_dir=where)
    assert hit.cached and len(hashed) == 1  # the memo's hash, the file not read
    _assert_same(hit, first)
    # An unreadable memo only costs the hash, and is written again.
    memo.write_text("{not json")
    assert cache.load(NAME, str(path), cache_dir=where).cached and len(hashed) == 2
    assert cache.load(NAME, str(path), cache_dir=where).cached and len(hashed) == 2
    # Rewritten in place with other weights, same size, mtime put back: ctime moved.
    before = path.stat()
    save(2)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino
    )  # fmt: skip
    second = cache.load(NAME, str(path), cache_dir=where)
    assert not second.cached and len(hashed) == 3
    _assert_same(second, load(NAME, str(path)))
    # Hashed within _RACY_NS of its change (a coarse clock could hide the next one):
    # hashed again.
    assert cache.load(NAME, str(path), cache_dir=where).cached and len(hashed) == 4


@requires_torch
def test_corrupt_or_foreign_entry_is_converted_again(tmp_path):
    want = cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
    (entry,) = _entries(tmp_path)
    good = entry.read_bytes()
    bad = {
        "garbage": b"not msgpack",
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }
    for case, data in bad.items():
        entry.write_bytes(data)
        got = cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
        assert not got.cached, case
        assert entry.read_bytes() == good, case  # overwritten with the conversion
        _assert_same(got, want)
    # A valid file whose key is another's (say, copied by hand): not used, overwritten.
    save_variables(entry, NAME, want.module, want.variables, meta={"key": {}, "info": want.info})
    assert not cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached
    assert cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached


@requires_torch
def test_least_recently_used_entries_leave_beyond_the_size_cap(tmp_path, monkeypatch):
    cache.load(NAME, "random", seed=3, cache_dir=tmp_path)
    (first,) = _entries(tmp_path)
    monkeypatch.setattr(cache, "MAX_BYTES", int(2.5 * first.stat().st_size))  # two fit
    cache.load(NAME, "random", seed=4, cache_dir=tmp_path)
    assert cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached  # 3 now used last
    cache.load(NAME, "random", seed=5, cache_dir=tmp_path)
    assert len(_entries(tmp_path)) == 2
    assert cache.load(NAME, "random", seed=3, cache_dir=tmp_path).cached
    assert cache.load(NAME, "random", seed=5, cache_dir=tmp_path).cached
    assert not cache.load(NAME, "random", seed=4, cache_dir=tmp_path).cached  # evicted
    monkeypatch.setattr(cache, "MAX_BYTES", 0)  # the entry just written always stays
    assert not cache.load(NAME, "random", seed=6, cache_dir=tmp_path).cached
    assert len(_entries(tmp_path)) == 1
    assert cache.load(NAME, "random", seed=6, cache_dir=tmp_path).cached


@requires_torch
def test_off_or_unwritable_cache_converts_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AFFJAX_WEIGHTS_CACHE_DIR", "off")
    assert not cache.load(NAME, "random", seed=3).cached
    assert not cache.load(NAME, "random", seed=3).cached
    assert not (tmp_path / "xdg").exists()
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a folder cannot be made under a file: no cache, no error
    for where in (blocked, blocked / "weights"):
        got = cache.load(NAME, "random", seed=3, cache_dir=where)
        assert not got.cached and got.info["weights"] == "random"
    assert blocked.read_text() == ""


@requires_torch
def test_hit_in_a_fresh_process_imports_no_torch(tmp_path):
    miss = cache.load(NAME, "random", seed=3, cache_dir=tmp_path / "c")
    np.save(tmp_path / "want.npy", _logits(miss))
    code = textwrap.dedent(
        f"""
        import sys
        import jax
        import numpy as np
        from converters import cache

        hit = cache.load({NAME!r}, "random", seed=3, cache_dir=sys.argv[1])
        assert hit.cached
        x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
        got = np.asarray(jax.jit(hit.module.apply)(hit.variables, x))
        np.testing.assert_array_equal(got, np.load(sys.argv[2]))
        loaded = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
        assert not loaded, loaded
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c"), str(tmp_path / "want.npy")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_model_fails_before_any_cache_work(tmp_path):
    from affjax.models import UnknownModelError

    with pytest.raises(UnknownModelError, match="resnet81"):
        cache.load("resnet81", "random", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())
