"""Input data for non-linearity signatures, loaded through torchvision.

This module reproduces how the published PyTorch reference script builds the
images it feeds to a classifier, and hands them to the JAX side as NHWC
``float32`` NumPy arrays:

* ``cifar10`` / ``cifar100`` / ``fashionMNIST``: the torchvision *test* splits,
  rooted at ``data_dir/cifar10``, ``data_dir/cifar100`` and ``data_dir/fmnist``.
* ``imagenet``: ``ImageFolder(data_dir/imagenet)`` (class sub-folders directly
  under that directory, e.g. the validation set sorted by class).
* ``random``: standard-normal tensors of shape ``(3, 256, 256)``.
* any other name: ``ImageFolder(data_dir/<name>/train)``.

Every image goes through the model's weights' preset transforms
(``weights.transforms(antialias=True)``: resize, centre crop, rescale to
``[0, 1]`` and ImageNet normalisation).  Batching follows the reference
``DataLoader(batch_size, shuffle=False, drop_last=True)``; ``batch_id`` picks a
single batch (0-based) and ``-1`` means all of them.

Differences from the reference, all deliberate:

* FashionMNIST images are grayscale PIL images (mode ``'L'``); the reference
  crashes on them because the ImageNet normalisation has three channels.  They
  are converted to RGB (three identical channels) before the transforms.
* ``random`` items are drawn from a per-item generator seeded with
  ``seed + i``, so item ``i`` does not depend on which batches are read (the
  reference draws from torch's global RNG after ``torch.manual_seed(seed)``, so
  values differ from it, but the distribution is the same).  The reference
  applies ``preprocess`` to whole batches; the preset transforms act on each
  image independently, so applying them per item gives the same numbers.
* Missing data never triggers a network access unless ``download=True``, and
  every "not found" case raises :class:`DataError` with a message naming the
  expected path and what to do, instead of torchvision's generic errors.

Nothing here is JAX-specific: this module lives in ``converters`` because it
imports torch; ``affjax`` only ever sees the NumPy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from converters import weights as weights_lib

__all__ = [
    "DATASETS",
    "DataError",
    "RandomDataset",
    "iter_batches",
    "load_images",
    "make_dataset",
    "num_batches",
    "preprocess_for",
]

#: Dataset names with special handling; any other name is an image folder at
#: ``data_dir/<name>/train``.  Matching is case-insensitive.
DATASETS = ("cifar10", "cifar100", "fashionMNIST", "imagenet", "random")

# Shape of one ``random`` item, as in the reference ``RandomDataset``.
_RANDOM_SHAPE = (3, 256, 256)

# Advice reused by the "not found" messages.
_DOWNLOAD_HINT = "Pass --download (download=True) on a machine with a network"


class DataError(Exception):
    """A user-facing data problem (missing files, bad batch index, unknown model).

    The message always says what to do about it, so command-line front ends can
    print it as is instead of a traceback.
    """


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


def preprocess_for(model_name: str, weights=None, *, image_size: int | None = None) -> Callable:
    """Returns the preset transforms of a torchvision classifier's weights.

    The transforms are pure metadata (no download): resize to the weights'
    ``resize_size``, centre crop to ``crop_size``, rescale to ``[0, 1]`` and
    normalise with the weights' mean and std.  They accept PIL images and
    ``(C, H, W)`` / ``(B, C, H, W)`` tensors.

    Args:
        model_name: A torchvision classification model name, e.g. ``"resnet18"``.
        weights: as :func:`converters.weights.resolve`: ``None`` or ``"random"``
            (the DEFAULT weights' transforms, which is what the network would be
            evaluated with), a member name, a qualified name or a member.
        image_size: the input side a fixed-size model was built for (ViT's
            ``image_size``). Only used for random weights: torchvision builds
            those at its default size, which need not be DEFAULT's crop
            (``vit_h_14``: 224 vs 518), so the transforms of the first weights
            whose crop fits are taken instead (``IMAGENET1K_SWAG_LINEAR_V1``).

    Returns:
        The callable ``weights.transforms(antialias=True)``.

    Raises:
        DataError: Unknown model, or weights that do not exist for it.
    """
    try:
        chosen = weights_lib.resolve(model_name, weights)
    except weights_lib.WeightsError as err:
        raise DataError(str(err)) from None
    random = weights is None or (isinstance(weights, str) and weights.lower() == "random")
    if random and image_size is not None and chosen.transforms().crop_size != [image_size]:
        enum = weights_lib.weights_enum(model_name)
        fits = [w for w in enum if w.transforms().crop_size == [image_size]]
        if not fits:
            raise DataError(
                f"No {model_name} weights have {image_size} px transforms for the "
                f"{image_size} px model; pass preprocessed images (--images)."
            )
        chosen = fits[0]
    # ``antialias=True`` mirrors the reference; it is already the default of
    # ``ImageClassification`` in recent torchvision, but older releases warned
    # (or disagreed between PIL and tensor inputs) without it.
    return chosen.transforms(antialias=True)


class _ToRGB:
    """Converts PIL images to RGB before the weights' transforms.

    FashionMNIST yields mode ``'L'`` images and the ImageNet normalisation
    needs three channels.  A module-level class rather than a lambda so the
    transform pickles for ``num_workers > 0`` with the ``spawn`` start method.
    """

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img):
        if isinstance(img, Image.Image) and img.mode != "RGB":
            img = img.convert("RGB")
        return self.transform(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


class RandomDataset(Dataset):
    """Standard-normal images, reproducible item by item.

    Item ``i`` is ``torch.randn(3, 256, 256)`` drawn from a generator seeded
    with ``seed + i`` (then passed through ``transform``), so it is the same
    whichever batch is requested.  The reference draws the items from the
    global RNG after ``torch.manual_seed(seed)`` instead; the values differ but
    the distribution does not.

    Args:
        transform: Applied to each ``(3, 256, 256)`` float tensor (the preset
            transforms work on tensors: float input is not rescaled, only
            resized, cropped and normalised, exactly as in the reference).
        seed: Base seed.
        num_items: Dataset length (10000 in the reference).
        shape: Shape of one raw item.
    """

    def __init__(
        self,
        transform: Callable | None = None,
        *,
        seed: int = 987,
        num_items: int = 10000,
        shape: tuple[int, ...] = _RANDOM_SHAPE,
    ):
        if num_items < 1:
            raise DataError(f"The random dataset needs at least one item, got {num_items}.")
        self.transform = transform
        self.seed = int(seed)
        self.num_items = int(num_items)
        self.shape = tuple(shape)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_items:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(self.seed + int(index))
        img = torch.randn(self.shape, generator=gen)
        return self.transform(img) if self.transform is not None else img


def _missing(base: Path, names) -> list[str]:
    return [n for n in names if not (base / n).is_file()]


def _torchvision_dataset(cls, pretty: str, root: Path, preprocess, download: bool):
    """Builds a torchvision test split, turning "not found" into DataError."""
    if cls is torchvision.datasets.FashionMNIST:
        # MNIST-style datasets read the decompressed idx files from
        # ``root/FashionMNIST/raw`` and require train and test files alike.
        base = root / cls.__name__ / "raw"
        expected = [os.path.splitext(os.path.basename(u))[0] for u, _ in cls.resources]
        archive = "the four decompressed *-ubyte files (gunzip the *-ubyte.gz downloads)"
    else:
        # CIFAR checks every batch, the *train* batches included, against its
        # MD5 sum even for ``train=False``, plus the meta file.
        base = root / cls.base_folder
        expected = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        archive = f"the extracted {cls.filename}"
    try:
        return cls(root=str(root), train=False, transform=preprocess, download=download)
    except (RuntimeError, URLError, OSError) as err:
        missing = _missing(base, expected)
        detail = (
            f"missing: {', '.join(missing)}"
            if missing
            else "files present but failed torchvision's integrity check (corrupted?)"
        )
        if download:
            raise DataError(
                f"Could not download {pretty} into {root} ({type(err).__name__}: {err}). "
                f"Check the network, or place {archive} in {base} and run without --download."
            ) from err
        raise DataError(
            f"{pretty} not found or corrupted under {root} (expected {base} with "
            f"{', '.join(expected)}; {detail}). {_DOWNLOAD_HINT}, or place {archive} there."
        ) from err


def _image_folder(root: Path, preprocess, *, download: bool, name: str):
    """Builds ``ImageFolder(root)``, turning every "nothing there" into DataError."""
    # ImageFolder has no download: ImageNet and custom folders must be placed
    # by hand, so say so instead of suggesting --download.
    how = f"put the images in class sub-folders {root}/<class>/<image>" + (
        " (image folders cannot be downloaded automatically)" if download else ""
    )
    if not root.is_dir():
        raise DataError(f"Dataset {name!r}: directory {root} not found; {how}.")
    try:
        dataset = torchvision.datasets.ImageFolder(str(root), transform=preprocess)
    except FileNotFoundError as err:
        # Raised for no class sub-folder and for class folders without images.
        raise DataError(f"Dataset {name!r}: no usable images under {root} ({err}); {how}.") from err
    if len(dataset) == 0:  # pragma: no cover - ImageFolder already raises
        raise DataError(f"Dataset {name!r}: {root} holds no images; {how}.")
    return dataset


def make_dataset(
    name: str,
    data_dir,
    preprocess: Callable,
    *,
    download: bool = False,
    seed: int = 987,
    num_random: int = 10000,
) -> Dataset:
    """Builds the dataset the reference script uses for ``name``.

    Args:
        name: ``cifar10``, ``cifar100``, ``fashionMNIST``, ``imagenet``,
            ``random`` (case-insensitive) or the name of an image folder at
            ``data_dir/<name>/train``.
        data_dir: Root directory of all datasets.
        preprocess: Transforms applied to each image (see :func:`preprocess_for`).
        download: Let torchvision download CIFAR / FashionMNIST when missing.
            Without it no network access is ever attempted.
        seed: Seed of the ``random`` dataset.
        num_random: Length of the ``random`` dataset.

    Returns:
        A map-style dataset whose items are ``(image, label)`` pairs (or bare
        images for ``random``), images being ``(3, H, W)`` float tensors.

    Raises:
        DataError: The data is missing, empty or could not be downloaded.
    """
    data_dir = Path(data_dir).expanduser()
    key = name.lower()
    if key == "random":
        return RandomDataset(preprocess, seed=seed, num_items=num_random)
    # Only PIL-backed datasets can be grayscale; the wrapper is a no-op on RGB.
    preprocess = _ToRGB(preprocess)
    tv = torchvision.datasets
    if key == "cifar10":
        return _torchvision_dataset(
            tv.CIFAR10, "CIFAR-10", data_dir / "cifar10", preprocess, download
        )
    if key == "cifar100":
        return _torchvision_dataset(
            tv.CIFAR100, "CIFAR-100", data_dir / "cifar100", preprocess, download
        )
    if key == "fashionmnist":
        return _torchvision_dataset(
            tv.FashionMNIST, "FashionMNIST", data_dir / "fmnist", preprocess, download
        )
    if key == "imagenet":
        return _image_folder(data_dir / "imagenet", preprocess, download=download, name=name)
    return _image_folder(data_dir / name / "train", preprocess, download=download, name=name)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def num_batches(dataset, batch_size: int) -> int:
    """Number of full batches (``drop_last=True`` semantics)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}.")
    return len(dataset) // batch_size


def iter_batches(
    dataset, batch_size: int, batch_id: int = 0, *, num_workers: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields preprocessed batches as NHWC ``float32`` arrays.

    Equivalent to iterating ``DataLoader(dataset, batch_size, shuffle=False,
    drop_last=True)`` and keeping batch ``batch_id``, but only the selected
    items are loaded.  Arguments are validated immediately (not on the first
    ``next``), so errors surface where the call is made.

    Args:
        dataset: A dataset from :func:`make_dataset` (items are images or
            ``(image, label)`` pairs).
        batch_size: Images per batch; a trailing partial batch is dropped.
        batch_id: 0-based batch to yield, or ``-1`` for every batch.
        num_workers: ``DataLoader`` worker processes.

    Returns:
        An iterator of ``(batch_index, images)`` with ``images`` of shape
        ``[batch_size, H, W, 3]``.

    Raises:
        DataError: ``batch_id`` out of range or fewer items than ``batch_size``.
    """
    n = num_batches(dataset, batch_size)
    if n == 0:
        raise DataError(
            f"The dataset has {len(dataset)} images, fewer than batch_size={batch_size}; "
            "use a smaller batch size."
        )
    if batch_id == -1:
        indices = range(n * batch_size)
        first = 0
    elif 0 <= batch_id < n:
        # A Subset of just this batch: the same items the reference
        # DataLoader would yield at that position, without loading and
        # transforming all the batches before it.
        indices = range(batch_id * batch_size, (batch_id + 1) * batch_size)
        first = batch_id
    else:
        raise DataError(
            f"batch_id={batch_id} is out of range: the dataset has {len(dataset)} images, "
            f"i.e. {n} batch(es) of {batch_size} (valid ids 0..{n - 1}, or -1 for all)."
        )
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        drop_last=True,
        num_workers=num_workers,
    )
    return _generate(loader, first)


def _generate(loader, first: int) -> Iterator[tuple[int, np.ndarray]]:
    for offset, batch in enumerate(loader):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        # NCHW (torch) -> NHWC (flax convolutions).
        nhwc = images.to(torch.float32).permute(0, 2, 3, 1).contiguous().numpy()
        yield first + offset, nhwc


def load_images(
    name: str,
    data_dir,
    model_name: str,
    weights,
    batch_size: int,
    batch_id: int = 0,
    *,
    download: bool = False,
    seed: int = 987,
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`preprocess_for`, :func:`make_dataset` and :func:`iter_batches` together.

    Args:
        name: Dataset name (see :func:`make_dataset`).
        data_dir: Root directory of all datasets.
        model_name: torchvision classifier whose transforms to use.
        weights: Weights name, or ``None`` / ``"random"`` for DEFAULT's transforms.
        batch_size: Images per batch.
        batch_id: 0-based batch, or ``-1`` for all.
        download: Allow torchvision to download missing CIFAR / FashionMNIST.
        seed: Seed of the ``random`` dataset.

    Returns:
        An iterator of ``(batch_index, images)``, images NHWC ``float32``.

    Raises:
        DataError: See the three functions above.
    """
    preprocess = preprocess_for(model_name, weights)
    dataset = make_dataset(name, data_dir, preprocess, download=download, seed=seed)
    return iter_batches(dataset, batch_size, batch_id)
