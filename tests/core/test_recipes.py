"""labkit.core.recipes: the classifier recipe's data splits."""

from __future__ import annotations

import pytest
import torch

from labkit.core import recipes


def _image_set(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.flatten(1)}


@pytest.mark.parametrize("seed", [0, 1])
def test_classifier_splits_are_disjoint_for_every_seed(seed):
    train, test = recipes._splits(recipes.classifier_settings(seed=seed))
    assert len(train) and len(test)
    assert not _image_set(train.images) & _image_set(test.images)
