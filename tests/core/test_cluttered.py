"""Tests for cluttered digits (labkit.core.cluttered and the `cluttered_mnist5k` loader)."""

from __future__ import annotations

import pytest
import torch

from labkit.core import data
from labkit.core.cluttered import INK, clutter_digits


def _digits(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    digits = torch.zeros(n, 1, 28, 28)
    digits[:, :, 6:22, 10:18] = 0.2 + 0.8 * torch.rand(n, 1, 16, 8, generator=g)
    digits[:, :, 6:22, 9] = 0.05  # a faint edge, below the mask's threshold
    return digits


def test_the_digit_sits_on_top_inside_its_mask_and_fragments_come_from_others():
    digits = _digits()
    made = clutter_digits(digits, canvas=40, fragments=5, fragment_size=6, seed=3)
    assert made.images.shape == made.masks.shape == (6, 1, 40, 40)
    for i in range(6):
        y, x = made.corners[i].tolist()
        placed = made.images[i, 0, y:y + 28, x:x + 28]
        ink = digits[i, 0] > INK
        assert torch.equal(made.masks[i, 0, y:y + 28, x:x + 28], ink)
        assert made.masks[i].sum() == ink.sum()  # nothing outside the placed digit
        assert torch.equal(placed[ink], digits[i, 0][ink])  # inside the mask: the digit itself
        assert (placed >= digits[i, 0]).all()  # outside: clutter may only add, by maximum
        share = digits[i, 0][ink].sum() / digits[i, 0].sum()
        assert share > 0.9  # the mask holds most of the digit's ink
        assert (made.fragment_sources[i] != i).all()
    assert (made.images > 0).float().mean() > (digits > 0).float().mean() * (28 / 40) ** 2


def test_same_seed_same_images_and_bad_sizes():
    digits = _digits()
    a, b = (clutter_digits(digits, seed=1) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(clutter_digits(digits, seed=2).images, a.images)
    with pytest.raises(ValueError, match="canvas"):
        clutter_digits(digits, canvas=20)
    with pytest.raises(ValueError, match="fragment_size"):
        clutter_digits(digits, fragment_size=40)
    with pytest.raises(ValueError, match="grey"):
        clutter_digits(torch.rand(2, 3, 28, 28))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, {s: data.load_dataset("cluttered_mnist5k", s, root=root) for s in data.SPLITS}


def test_loader_is_mnist5k_cluttered_seeded_cached_and_balanced(splits):
    root, loaded = splits
    train, test = loaded["train"], loaded["test"]
    assert train.images.shape == (4000, 1, 60, 60) and test.masks.shape == (1000, 1, 60, 60)
    assert train.masks.dtype == torch.bool and train.name == "cluttered_mnist5k"
    assert train.class_counts().tolist() == [400] * 10 and test.class_counts().tolist() == [100] * 10
    source = data.load_dataset("mnist5k", "test")
    assert torch.equal(test.labels, source.labels)
    # inside each mask, the pixels are the source digit's own ink
    for i in (0, 123, 999):
        ink = source.images[i, 0] > INK
        assert test.masks[i].sum() == ink.sum()
        assert torch.equal(torch.sort(test.images[i][test.masks[i]]).values,
                           torch.sort(source.images[i, 0][ink]).values)
    again = data.load_dataset("cluttered_mnist5k", "test", root=root)  # from the cache file
    assert torch.equal(again.images, test.images) and torch.equal(again.masks, test.masks)
    assert list((root / "cluttered_mnist5k").glob("*.pt"))


def test_train_and_test_share_no_source_digit():
    used = {}
    for split in data.SPLITS:
        index, _, made = data.cluttered_parts(split)
        used[split] = set(index.tolist()) | set(index[made.fragment_sources.flatten()].tolist())
    assert used["train"].isdisjoint(used["test"])
    assert len(used["train"]) + len(used["test"]) == 5000


def test_subsets_and_zero_shot_split_keep_the_masks(splits, monkeypatch):
    root, loaded = splits
    few = loaded["train"].k_per_class(3, seed=1)
    assert few.masks.shape == (30, 1, 60, 60)
    picked = loaded["train"].take([5, 7])
    assert torch.equal(picked.masks, loaded["train"].masks[[5, 7]])
    monkeypatch.setenv("LABKIT_DATA", str(root))
    seen, unseen = data.zero_shot_split("cluttered_mnist5k")
    assert len(seen) == len(unseen) == 2500 and seen.masks.shape == (2500, 1, 60, 60)
    assert set(unseen.labels.tolist()) == set(range(5))


def test_bad_split_or_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        data.load_dataset("cluttered_mnist5k", "val", root=tmp_path)
    with pytest.raises(ValueError, match="canvas"):
        data.load_dataset("cluttered_mnist5k", "train", canvas=16, root=tmp_path)
    with pytest.raises(ValueError, match="masks must be"):
        data.ArrayDataset(torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"],
                          masks=torch.zeros(2, 1, 3, 3, dtype=torch.bool))
