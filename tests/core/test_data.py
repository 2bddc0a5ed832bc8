"""Tests for labkit.core.data: embedded splits and the loaders of every on-disk format.

The downloadable / folder datasets are tested offline: tiny files are written in the real
on-disk layout into tmp_path and read back with the real code (root=tmp_path).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from labkit.core import data
from labkit.core.data import ArrayDataset, ImageFolderDataset, load_dataset, zero_shot_split

# ----------------------------------------------------------------------------- helpers


def _image_keys(images: torch.Tensor) -> set[bytes]:
    return {img.numpy().tobytes() for img in images}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """Write an unsigned-byte IDX file (the MNIST format), optionally gzipped."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_like(root: Path, folder: str, rng: np.random.Generator, gz: bool = False):
    raw = root / folder / "raw"
    out = {}
    for prefix, n in (("train", 7), ("t10k", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (images, labels)
    return out


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG", quality=95)


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def _identity_transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


COLORS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250), (250, 10, 250)]


# ----------------------------------------------------------------------------- embedded sets


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k", "train", seed=0), load_dataset("mnist5k", "test", seed=0)


def test_mnist5k_is_class_balanced(mnist5k):
    train, test = mnist5k
    assert isinstance(train, ArrayDataset)
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) >= 0 and float(train.images.max()) <= 1
    assert float(train.images.max()) > 0.9  # scaled from 0..255, not left raw or doubly scaled
    assert train.class_counts().tolist() == [400] * 10
    assert test.class_counts().tolist() == [100] * 10
    assert train.classes == [str(d) for d in range(10)] and train.num_classes == 10
    assert train.image_shape == (1, 28, 28)


def test_mnist5k_train_and_test_are_disjoint(mnist5k):
    train, test = mnist5k
    assert not _image_keys(train.images) & _image_keys(test.images)


def test_mnist5k_is_seeded(mnist5k):
    train, test = mnist5k
    again = load_dataset("mnist5k", "train", seed=0)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    other_test = load_dataset("mnist5k", "test", seed=1)
    assert other_test.class_counts().tolist() == [100] * 10
    assert _image_keys(other_test.images) != _image_keys(test.images)


def test_digits_split():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert train.image_shape == (1, 8, 8)
    assert len(train) + len(test) == 1797
    assert float(train.images.max()) == 1.0


def test_zero_shot_split_mnist5k():
    seen, unseen = zero_shot_split("mnist5k")
    assert seen.classes == ["0", "1", "2", "3", "4"] and unseen.classes == ["5", "6", "7", "8", "9"]
    assert len(seen) == 2500 and len(unseen) == 2500
    assert seen.class_counts().tolist() == [500] * 5 and unseen.class_counts().tolist() == [500] * 5
    assert not _image_keys(seen.images) & _image_keys(unseen.images)
    # relabelled from 0: unseen label 0 is digit 5; its images are the digit-5 images of mnist5k
    full_train = load_dataset("mnist5k", "train")
    fives = _image_keys(full_train.images[full_train.labels == 5])
    assert fives <= _image_keys(unseen.images[unseen.labels == 0])


def test_zero_shot_split_errors():
    with pytest.raises(ValueError, match="in-memory"):
        zero_shot_split("cub200")
    with pytest.raises(ValueError, match="num_train_classes"):
        zero_shot_split("digits", num_train_classes=10)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in data.KNOWN:
        assert name in str(info.value)


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")


def test_bad_test_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


# ----------------------------------------------------------------------------- ArrayDataset


def _toy(counts=(3, 5, 4)) -> ArrayDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    return ArrayDataset(images, labels, ["a", "b", "c"], "toy")


def test_subset_classes_relabels():
    ds = _toy()
    sub = ds.subset_classes([2, 0])
    assert sub.classes == ["c", "a"]
    for image, label in zip(sub.images.flatten().long().tolist(), sub.labels.tolist(), strict=True):
        assert [2, 0][label] == int(ds.labels[image])
    keep = ds.subset_classes([1], relabel=False)
    assert keep.classes == ["a", "b", "c"] and set(keep.labels.tolist()) == {1} and len(keep) == 5


def test_subset_classes_errors():
    ds = _toy()
    with pytest.raises(ValueError, match="3"):
        ds.subset_classes([0, 3])
    with pytest.raises(ValueError):
        ds.subset_classes([-1])
    with pytest.raises(ValueError, match="distinct"):
        ds.subset_classes([1, 1])


def test_k_per_class():
    ds = _toy()
    sub = ds.k_per_class(3, seed=0)
    assert sub.class_counts().tolist() == [3, 3, 3]
    assert torch.equal(sub.images, ds.k_per_class(3, seed=0).images)
    assert len(set(sub.images.flatten().tolist())) == 9  # no repeats
    with pytest.raises(ValueError, match="'a'"):
        ds.k_per_class(4)
    with pytest.raises(ValueError):
        ds.k_per_class(0)


def test_array_dataset_validates_shapes():
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.long), ["a"])
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(3, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])


def test_stratified_split_fractions():
    labels = torch.tensor([0] * 10 + [1] * 20)
    train, test = data.stratified_split(labels, 0.3, seed=3)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(30))
    assert torch.bincount(labels[test]).tolist() == [3, 6]


# ----------------------------------------------------------------------------- MNIST / Fashion


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_loaders(tmp_path, name, folder, gz):
    written = write_mnist_like(tmp_path, folder, np.random.default_rng(0), gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(name, split, root=tmp_path)
        images, labels = written[prefix]
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.images.dtype == torch.float32
        assert torch.equal(ds.images, torch.from_numpy(images).float().div(255).unsqueeze(1))
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
        assert ds.num_classes == 10
    if name == "fashion_mnist":
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
        assert load_dataset("fashion-mnist", root=tmp_path).name == "fashion_mnist"


def test_read_idx_rejects_other_types(tmp_path):
    path = tmp_path / "floats-idx1"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(path)


def test_mnist_missing_says_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)
    assert "download=True" in str(info.value)


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_mnist_like(tmp_path, "MNIST", np.random.default_rng(1))
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 4


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_loader(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = []
    for i in range(1, 6):
        batch = {"batch_label": f"training batch {i} of 5",
                 "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 2).tolist(), "filenames": ["a.png", "b.png"]}
        _pickle(folder / f"data_batch_{i}", batch)
        batches.append(batch)
    test = {"batch_label": "testing batch 1 of 1", "data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
            "labels": [9, 0, 4], "filenames": ["c.png"] * 3}
    _pickle(folder / "test_batch", test)
    _pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072})

    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.classes == names
    assert train.labels.tolist() == sum((b["labels"] for b in batches), [])
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    first = batches[0]["data"][0]
    assert torch.equal(train.images[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)).float() / 255)
    assert float(train.images[0, 2, 0, 5]) == pytest.approx(first[2048 + 5] / 255)
    assert torch.equal(train.images[2], torch.from_numpy(batches[1]["data"][0].reshape(3, 32, 32)).float() / 255)
    ds_test = load_dataset("cifar10", "test", root=tmp_path)
    assert ds_test.labels.tolist() == [9, 0, 4] and len(ds_test) == 3


def test_cifar100_loader_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    fine = [f"class{i}" for i in range(100)]
    train = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "fine_labels": [3, 99, 0, 3],
             "coarse_labels": [1, 2, 3, 4], "filenames": ["x"] * 4}
    test = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "fine_labels": [7, 8],
            "coarse_labels": [0, 0], "filenames": ["y"] * 2}
    _pickle(folder / "train", train)
    _pickle(folder / "test", test)
    _pickle(folder / "meta", {"fine_label_names": fine, "coarse_label_names": [f"c{i}" for i in range(20)]})
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.labels.tolist() == [3, 99, 0, 3] and ds.classes == fine and ds.num_classes == 100
    assert torch.equal(ds.images, torch.from_numpy(train["data"].reshape(-1, 3, 32, 32)).float() / 255)
    assert load_dataset("cifar100", "test", root=tmp_path).labels.tolist() == [7, 8]


def test_cifar_missing_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", "test", root=tmp_path)


# ----------------------------------------------------------------------------- folder sets


def write_cub(root: Path, num_classes: int = 4, per_class: int = 2) -> list[tuple[Path, int]]:
    base = root / "CUB_200_2011"
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(num_classes)]
    images, labels, written = [], [], []
    image_id = 1
    for c, name in enumerate(classes):
        for j in range(per_class):
            rel = f"{name}/Bird_{c}_{j:04d}.jpg"
            write_jpeg(base / "images" / rel, COLORS[(c + j) % len(COLORS)])
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            written.append((base / "images" / rel, c))
            image_id += 1
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c + 1} {n}" for c, n in enumerate(classes)) + "\n")
    return written


def test_cub200_zero_shot_split(tmp_path):
    written = write_cub(tmp_path)
    train = load_dataset("cub200", "train", root=tmp_path, transform=_identity_transform)
    test = load_dataset("cub200", "test", root=tmp_path, transform=_identity_transform)
    assert isinstance(train, ImageFolderDataset)
    assert train.classes == ["001.Bird_0", "002.Bird_1"] and test.classes == ["003.Bird_2", "004.Bird_3"]
    assert len(train) == 4 and len(test) == 4
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert train.paths == [p for p, c in written if c < 2]
    assert test.paths == [p for p, c in written if c >= 2]
    image, label = test[3]
    assert label == 1
    assert image.shape == (3, 16, 20)
    assert torch.equal(image, _decoded(written[7][0]))
    assert torch.allclose(image.mean((1, 2)), torch.tensor(COLORS[(3 + 1) % 6]) / 255, atol=0.03)
    loaded = train.load_all()
    assert loaded.images.shape == (4, 3, 16, 20) and loaded.labels.tolist() == [0, 0, 1, 1]


def test_cub200_default_transform_resizes(tmp_path):
    write_cub(tmp_path)
    test = load_dataset("cub200", "test", root=tmp_path, image_size=24)
    image, _ = test[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_cub200_missing_and_no_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cub200", root=tmp_path)
    assert str(tmp_path / "CUB_200_2011") in str(info.value)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        load_dataset("cub200", root=tmp_path, download=True)


def test_folder_subset_classes_errors(tmp_path):
    write_cub(tmp_path)
    train = load_dataset("cub200", "train", root=tmp_path, transform=_identity_transform)
    with pytest.raises(ValueError, match="valid ids"):
        train.subset_classes([5])
    sub = train.subset_classes([1])
    assert len(sub) == 2 and sub.labels.tolist() == [0, 0] and sub.classes == ["002.Bird_1"]
    assert sub.transform is _identity_transform


def write_cars(root: Path, num_classes: int = 4) -> list[tuple[Path, int]]:
    base = root / "cars196"
    rows, written = [], []
    for i in range(2 * num_classes):
        c = i % num_classes
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_jpeg(base / rel, COLORS[c])
        rows.append((rel, 1, 2, 30, 40, c + 1, i % 2))
        written.append((base / rel, c))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    annotations = np.array(rows, dtype=dtype)
    names = np.array([f"Car Model {c} 2012" for c in range(num_classes)], dtype=object)
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return written


def test_cars196_zero_shot_split(tmp_path):
    written = write_cars(tmp_path)
    train = load_dataset("cars196", "train", root=tmp_path, transform=_identity_transform)
    test = load_dataset("cars196", "test", root=tmp_path, transform=_identity_transform)
    assert train.classes == ["Car Model 0 2012", "Car Model 1 2012"]
    assert test.classes == ["Car Model 2 2012", "Car Model 3 2012"]
    # the official train/test flags are ignored: the zero-shot protocol splits by class
    assert train.paths == [p for p, c in written if c < 2]
    assert train.labels.tolist() == [0, 1, 0, 1]
    assert test.paths == [p for p, c in written if c >= 2]
    assert test.labels.tolist() == [0, 1, 0, 1]
    image, label = test[1]
    assert label == 1 and torch.equal(image, _decoded(written[3][0]))


def test_cars196_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cars_annos.mat"):
        load_dataset("cars196", root=tmp_path)


def write_sop(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """Like the real release: Ebay_train has classes 1..3, Ebay_test 4..5 (an odd total)."""
    base = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    files = {"train": [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3)], "test": [(6, 4), (7, 4), (8, 5)]}
    written = {}
    for split, rows in files.items():
        lines, written[split] = [header], []
        for image_id, class_id in rows:
            rel = f"bicycle_final/{class_id}_{image_id}.JPG"
            write_jpeg(base / rel, COLORS[class_id % 6])
            lines.append(f"{image_id} {class_id} 1 {rel}")
            written[split].append((base / rel, class_id))
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return written


def test_sop_uses_the_official_class_split(tmp_path):
    written = write_sop(tmp_path)
    train = load_dataset("sop", "train", root=tmp_path, transform=_identity_transform)
    test = load_dataset("sop", "test", root=tmp_path, transform=_identity_transform)
    assert train.paths == [p for p, _ in written["train"]]
    assert train.labels.tolist() == [0, 0, 1, 2, 2] and train.classes == ["1", "2", "3"]
    assert test.paths == [p for p, _ in written["test"]]
    assert test.labels.tolist() == [0, 0, 1] and test.classes == ["4", "5"]
    image, label = test[2]
    assert label == 1 and torch.equal(image, _decoded(written["test"][2][0]))


def test_sop_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="Stanford_Online_Products"):
        load_dataset("sop", root=tmp_path)


def test_image_folder_dataset_checks_lengths():
    with pytest.raises(ValueError):
        ImageFolderDataset([Path("a.jpg")], torch.tensor([0, 1]), ["x", "y"], None)


def test_memoised_loads_are_loaded_once_per_data_root(monkeypatch, tmp_path):
    first = data.load_memoised("digits", "train")
    assert data.load_memoised("digits", "train") is first
    assert data.zero_shot_split("digits") is data.zero_shot_split("digits")
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path))
    assert data.load_memoised("digits", "train") is not first
    seen, unseen = data.class_disjoint_split("digits")
    assert set(seen.labels.tolist()) == set(range(5)) == set(unseen.labels.tolist())
    assert torch.equal(seen.images, data.zero_shot_split("digits")[0].images)


def test_m_per_class_batches_are_class_blocks_seeded_by_numpy():
    labels = torch.arange(6).repeat_interleave(10)
    np.random.seed(1)
    sampler = data.MPerClassBatches(labels, m=4, classes_per_batch=3, batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    for b in batches:
        assert len(b) == 12 and len(set(b)) == 12  # classes of 10 give distinct samples
        blocks = labels[b].view(3, 4)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 3
    np.random.seed(1)
    assert list(data.MPerClassBatches(labels, 4, 3, 5)) == batches
    assert list(sampler) != batches  # the next epoch draws new batches
    with pytest.raises(ValueError, match="classes_per_batch"):
        data.MPerClassBatches(labels, 4, 7, 5)
    with pytest.raises(ValueError, match="m .* must be >= 2"):
        data.MPerClassBatches(labels, 1, 3, 5)
