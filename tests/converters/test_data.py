"""Tests of converters.data on tiny fake datasets written to tmp_path (no network)."""

from __future__ import annotations

from optional import skip_module_without_torch

skip_module_without_torch()

import os
import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

torchvision = pytest.importorskip("torchvision")

from converters import data  # noqa: E402
from converters.data import (  # noqa: E402
    DataError,
    iter_batches,
    load_images,
    make_dataset,
    num_batches,
    preprocess_for,
)

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ---------------------------------------------------------------------------
# Fixtures and fake-data writers
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Fails any test that would touch the network.

    The dataset modules import the helpers by name (``from .utils import
    download_and_extract_archive``), so patching ``torchvision.datasets.utils``
    alone would not catch them: the module-level names are patched as well.
    """

    def forbidden(*args, **kwargs):
        raise AssertionError(f"network download attempted: {args} {kwargs}")

    for mod in (
        torchvision.datasets.utils,
        torchvision.datasets.cifar,
        torchvision.datasets.mnist,
    ):
        for fn in ("download_url", "download_and_extract_archive"):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, forbidden)


@pytest.fixture
def skip_md5(monkeypatch):
    """Lets fake CIFAR files pass torchvision's integrity check.

    CIFAR verifies every file (train batches included, even for train=False)
    and the meta file against the MD5 sums of the real archive, through the
    module-level ``check_integrity`` used by both ``_check_integrity`` and
    ``_load_meta``.  Fake files cannot match those sums, so the check is
    reduced to "the file exists" -- missing files are still detected.
    """
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


def _images(n, seed, h=32, w=32, c=3):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _write_cifar(root, base_folder, train_files, test_file, meta_file, meta_key, label_key, imgs):
    """Writes a CIFAR-style folder; ``imgs`` (NHWC uint8) become the test split."""
    folder = root / base_folder
    folder.mkdir(parents=True)

    # The real files are Python 2 pickles whose str keys load as str with
    # ``encoding='latin1'``; a Python 3 pickle must therefore use str keys too
    # (bytes keys would stay bytes and torchvision's entry["data"] would fail).
    def dump(name, arr):
        flat = arr.transpose(0, 3, 1, 2).reshape(len(arr), -1)  # rows of R..G..B planes
        with open(folder / name, "wb") as f:
            pickle.dump({"data": flat, label_key: list(range(len(arr)))}, f)

    for name in train_files:
        dump(name, imgs[:1])
    dump(test_file, imgs)
    with open(folder / meta_file, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(100)]}, f)


def write_cifar10(root, imgs):
    _write_cifar(
        root,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "label_names",
        "labels",
        imgs,
    )


def write_cifar100(root, imgs):
    _write_cifar(
        root, "cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels", imgs
    )


def _write_idx(path, arr):
    # IDX format: big-endian magic (0x0000, dtype 0x08 = uint8, ndim), then
    # one big-endian int32 per dimension, then the raw bytes.
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_fmnist(root, imgs):
    """``imgs``: [N, 28, 28] uint8 for the t10k split (train split gets one image)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    # torchvision requires all four decompressed files to exist (no MD5 check).
    for split, arr in (("t10k", imgs), ("train", imgs[:1])):
        _write_idx(raw / f"{split}-images-idx3-ubyte", arr)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(arr)) % 10)


def write_image_folder(root, counts=(3, 2), seed=0):
    """PNG files of assorted sizes in class sub-folders; returns the paths in ImageFolder order."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, n in enumerate(counts):
        cls = root / f"class{k}"
        cls.mkdir(parents=True)
        for j in range(n):
            h, w = rng.integers(20, 60, size=2)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            p = cls / f"img{j}.png"
            Image.fromarray(arr).save(p)
            paths.append(p)
    return paths


@pytest.fixture(scope="module")
def resnet18_tf():
    return preprocess_for("resnet18", None)


def _by_hand(tf, pil_img):
    """Reference: the weights' transforms on one PIL image, as NHWC numpy."""
    return tf(pil_img.convert("RGB")).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------
# preprocess_for
# ---------------------------------------------------------------------------


def test_preprocess_for_weights_variants():
    default = preprocess_for("resnet18", None)
    assert default.crop_size == [224] and default.resize_size == [256]
    assert default.antialias is True
    for w in ("random", "DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        assert repr(preprocess_for("resnet18", w)) == repr(default)
    # DEFAULT differs from V1 for resnet50: the lookup really uses the weights.
    assert preprocess_for("resnet50", None).resize_size == [232]
    assert preprocess_for("resnet50", "IMAGENET1K_V1").resize_size == [256]
    assert preprocess_for("inception_v3", "random").crop_size == [299]


def test_preprocess_for_random_fixed_size_model():
    # vit_h_14's DEFAULT (SWAG end-to-end) weights are 518 px, its random init 224 px.
    assert preprocess_for("vit_h_14", "random").crop_size == [518]
    fitted = preprocess_for("vit_h_14", "random", image_size=224)
    linear = preprocess_for("vit_h_14", "IMAGENET1K_SWAG_LINEAR_V1")
    assert fitted.crop_size == [224] and repr(fitted) == repr(linear)
    # the size only matters where DEFAULT does not fit, and never for named weights
    assert repr(preprocess_for("vit_b_16", None, image_size=224)) == repr(
        preprocess_for("vit_b_16", "DEFAULT")
    )
    assert preprocess_for("vit_h_14", "DEFAULT", image_size=224).crop_size == [518]
    with pytest.raises(DataError, match="100 px"):
        preprocess_for("vit_b_16", "random", image_size=100)


def test_preprocess_for_errors():
    with pytest.raises(DataError, match="list_models") as exc:
        preprocess_for("resnet19", None)
    assert "resnet18" in str(exc.value)  # close-match suggestion
    with pytest.raises(DataError, match="classification"):
        preprocess_for("fasterrcnn_resnet50_fpn", None)  # registered, but not a classifier
    with pytest.raises(DataError, match="IMAGENET1K_V1"):
        preprocess_for("resnet18", "NOPE")
    with pytest.raises(DataError, match="do not belong"):
        preprocess_for("resnet18", "ResNet50_Weights.DEFAULT")


# ---------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_values_and_batches(tmp_path, skip_md5, resnet18_tf, name, writer):
    imgs = _images(10, seed=1)
    writer(tmp_path / name, imgs)
    ds = make_dataset(name, tmp_path, resnet18_tf)
    assert len(ds) == 10
    assert num_batches(ds, 4) == 2

    (idx, batch), *rest = list(iter_batches(ds, 4, 1))
    assert rest == [] and idx == 1
    assert batch.shape == (4, 224, 224, 3) and batch.dtype == np.float32
    # Batch 1 of size 4 holds items 4..7, equal to the transforms applied by hand.
    for j in range(4):
        expect = _by_hand(resnet18_tf, Image.fromarray(imgs[4 + j]))
        np.testing.assert_allclose(batch[j], expect, atol=1e-6, rtol=0)

    # -1: every full batch, the trailing 2 images dropped.
    all_batches = list(iter_batches(ds, 4, -1))
    assert [i for i, _ in all_batches] == [0, 1]
    np.testing.assert_array_equal(all_batches[1][1], batch)

    with pytest.raises(DataError, match="2 batch"):
        iter_batches(ds, 4, 2)  # raised at call time, before any iteration
    with pytest.raises(DataError, match="out of range"):
        iter_batches(ds, 4, -2)
    with pytest.raises(DataError, match="fewer than batch_size"):
        iter_batches(ds, 11, 0)


def test_load_images_cifar10(tmp_path, skip_md5):
    imgs = _images(6, seed=2)
    write_cifar10(tmp_path / "cifar10", imgs)
    out = list(load_images("cifar10", tmp_path, "resnet18", "DEFAULT", batch_size=3, batch_id=-1))
    assert [i for i, _ in out] == [0, 1]
    tf = preprocess_for("resnet18", "DEFAULT")
    np.testing.assert_allclose(
        out[1][1][2], _by_hand(tf, Image.fromarray(imgs[5])), atol=1e-6, rtol=0
    )


# ---------------------------------------------------------------------------
# FashionMNIST
# ---------------------------------------------------------------------------


def test_fashion_mnist_grayscale_to_rgb(tmp_path, resnet18_tf):
    imgs = _images(5, seed=3, h=28, w=28, c=1)[..., 0]
    write_fmnist(tmp_path / "fmnist", imgs)
    ds = make_dataset("fashionMNIST", tmp_path, resnet18_tf)
    assert len(ds) == 5
    [(idx, batch)] = list(iter_batches(ds, 2, 1))
    assert idx == 1 and batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    # Undo the (per-channel) normalisation: the three channels must coincide.
    raw = batch * STD + MEAN
    np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-5)
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-5)
    expect = _by_hand(resnet18_tf, Image.fromarray(imgs[3], mode="L"))
    np.testing.assert_allclose(batch[1], expect, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagenet", "my_set"])
def test_image_folder(tmp_path, resnet18_tf, name):
    root = tmp_path / "imagenet" if name == "imagenet" else tmp_path / name / "train"
    paths = write_image_folder(root, counts=(3, 2))
    ds = make_dataset(name, tmp_path, resnet18_tf)
    assert len(ds) == 5
    [(_, batch)] = list(iter_batches(ds, 2, 1))  # items 2 and 3: last of class0, first of class1
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    for j, p in enumerate(paths[2:4]):
        with Image.open(p) as im:
            np.testing.assert_allclose(batch[j], _by_hand(resnet18_tf, im), atol=1e-6, rtol=0)


def test_custom_name_uses_train_subfolder(tmp_path, resnet18_tf):
    write_image_folder(tmp_path / "my_set", counts=(1, 1))  # class folders, but no train/
    with pytest.raises(DataError) as exc:
        make_dataset("my_set", tmp_path, resnet18_tf)
    assert str(tmp_path / "my_set" / "train") in str(exc.value)


# ---------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------


def test_random_dataset(tmp_path):
    tf = preprocess_for("resnet18", "random")
    a = make_dataset("random", tmp_path, tf, seed=5, num_random=12)
    b = make_dataset("random", tmp_path, tf, seed=5, num_random=12)
    c = make_dataset("random", tmp_path, tf, seed=6, num_random=12)
    assert len(a) == 12
    batch1 = dict(iter_batches(a, 4, 1))[1]
    assert batch1.shape == (4, 224, 224, 3) and batch1.dtype == np.float32
    np.testing.assert_array_equal(dict(iter_batches(b, 4, 1))[1], batch1)
    assert not np.allclose(dict(iter_batches(c, 4, 1))[1], batch1)
    # Item i does not depend on the batch selection.
    everything = dict(iter_batches(a, 4, -1))
    assert sorted(everything) == [0, 1, 2]
    np.testing.assert_array_equal(everything[1], batch1)
    np.testing.assert_array_equal(dict(iter_batches(a, 2, 2))[2], batch1[:2])
    # Per-item transforms equal the reference's per-batch ones.
    raw = torch.stack([data.RandomDataset(None, seed=5, num_items=12)[i] for i in range(4, 8)])
    assert raw.shape == (4, 3, 256, 256)
    np.testing.assert_allclose(tf(raw).permute(0, 2, 3, 1).numpy(), batch1, atol=1e-6, rtol=0)
    # Default length mirrors the reference.
    assert len(make_dataset("random", tmp_path, tf)) == 10000


# ---------------------------------------------------------------------------
# Missing data, offline
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,subdir",
    [
        ("cifar10", "cifar10"),
        ("cifar100", "cifar100"),
        ("fashionMNIST", "fmnist"),
        ("imagenet", "imagenet"),
        ("my_set", os.path.join("my_set", "train")),
    ],
)
def test_missing_data_offline(tmp_path, resnet18_tf, name, subdir):
    with pytest.raises(DataError) as exc:
        make_dataset(name, tmp_path, resnet18_tf)
    msg = str(exc.value)
    assert str(tmp_path / subdir) in msg
    if name in ("cifar10", "cifar100", "fashionMNIST"):
        assert "--download" in msg
    # Image folders cannot be downloaded: the message says where to put images.
    else:
        assert "class sub-folders" in msg


def test_partial_cifar_lists_missing_files(tmp_path):
    # Only the test batch present: torchvision still wants the train batches.
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(b"x")
    with pytest.raises(DataError, match="missing: data_batch_1"):
        make_dataset("cifar10", tmp_path, preprocess_for("resnet18", None))


def test_download_failure_is_data_error(tmp_path, monkeypatch, resnet18_tf):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="Could not download CIFAR-10"):
        make_dataset("cifar10", tmp_path, resnet18_tf, download=True)


@pytest.mark.parametrize("layout", ["empty", "empty_class"])
def test_empty_image_folder(tmp_path, resnet18_tf, layout):
    root = tmp_path / "imagenet"
    root.mkdir()
    if layout == "empty_class":
        (root / "class0").mkdir()
    with pytest.raises(DataError, match="no usable images") as exc:
        make_dataset("imagenet", tmp_path, resnet18_tf)
    assert str(root) in str(exc.value)
