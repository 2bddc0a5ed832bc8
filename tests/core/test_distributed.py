"""Pure parts of labkit.core.distributed (no process group): torchrun's environment, the shards
of a batch, dropout's masks over ranks."""

import pytest
import torch
import torch.nn.functional as F

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


def test_contiguous_shards_give_rank_r_the_r_th_slice():
    assert D.contiguous_shards([5, 5, 3, 1, 2, 0], 2) == [[0, 1, 2], [3, 4, 5]]
    assert D.contiguous_shards([0] * 4, 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="a batch of 5 cannot be shared equally by 2 ranks"):
        D.contiguous_shards([0] * 5, 2)


@pytest.mark.parametrize("shape", [(12, 4, 3, 3), (12, 16)])
def test_global_dropout_keeps_the_one_process_mask_and_generator(shape):
    """Each rank's rows of the output are the rows of one process's F.dropout on the whole
    batch, whatever rows a rank holds, and the generator ends where one process's does."""
    batch = torch.randn(*shape)
    torch.manual_seed(3)
    whole = F.dropout(batch, 0.3, training=True)
    after = torch.rand(3)
    layer = D.convert_dropout(torch.nn.Sequential(torch.nn.Dropout(0.3)))[0]
    assert isinstance(layer, D.GlobalDropout)
    for rows in [*D.contiguous_shards(list(range(12)), 3), [11, 0, 5, 2]]:
        torch.manual_seed(3)
        with D.batch_layout(12, rows, batch.device):
            assert torch.equal(layer(batch[rows]), whole[rows])
        assert torch.equal(torch.rand(3), after)
    layer.eval()
    assert torch.equal(layer(batch), batch)  # eval: no mask, with or without a layout
    with pytest.raises(ValueError, match="Dropout2d cannot yet draw the global batch's mask"):
        D.convert_dropout(torch.nn.Sequential(torch.nn.Dropout2d(0.1)))
