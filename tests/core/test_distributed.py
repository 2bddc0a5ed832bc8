"""Pure parts of labkit.core.distributed: torchrun's environment and class shards of a batch."""

import pytest

from labkit.core import distributed as D


def test_ranks_come_from_torchrun_variables():
    assert D.ranks_from_env({}) == D.Ranks()
    ranks = D.ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.launched) == (3, 4, 1, True)
    assert not ranks.is_main
    with pytest.raises(ValueError, match="do not fit"):
        D.ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_class_shards_give_rank_r_the_classes_r_r_plus_w_in_batch_order():
    # representatives of classes 7, 2, 9, 4 first, then two samples of each
    labels = [7, 2, 9, 4, 7, 7, 2, 2, 9, 9, 4, 4]
    shards = D.class_shards(labels, 2)
    assert shards == [[0, 2, 4, 5, 8, 9], [1, 3, 6, 7, 10, 11]]
    assert [labels[p] for p in shards[0][:2]] == [7, 9]  # each rank's batch starts with its reps
    assert D.class_shards(labels, 1) == [list(range(12))]


def test_class_shards_refuse_what_ranks_cannot_share_equally():
    with pytest.raises(ValueError, match="3 classes cannot be shared by 2 ranks"):
        D.class_shards([0, 0, 1, 1, 2, 2], 2)
    with pytest.raises(ValueError, match="unequal shares"):
        D.class_shards([0, 0, 0, 1, 2, 2, 3, 3], 2)
