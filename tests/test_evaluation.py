"""The one evaluation: test-time views, scores, running sums and confusion counts (classicnets.evaluation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from classicnets.errors import ConfigError
from classicnets.evaluation import (
    TTA_MODES,
    EvalViews,
    RunningSums,
    evaluate_batches,
    scores,
    topk_correct,
    tta_views,
)


def test_tta_views_are_the_papers_crops_and_mirrors():
    x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)
    assert [v.shape for v in tta_views(x, "flip", 32)] == [(2, 1, 32, 32)] * 2
    views = list(tta_views(x, "ten-crop", 28))
    assert len(views) == 10 and all(v.shape == (2, 1, 28, 28) for v in views)
    assert torch.equal(views[0], x[..., :28, :28]) and torch.equal(views[6], x[..., 4:, 4:])
    assert torch.equal(views[8], x[..., 2:30, 2:30]) and torch.equal(views[9], x[..., 2:30, 2:30].flip(-1))


def test_test_time_views():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    views = list(tta_views(x, "ten-crop", 4))  # (corner, its mirror) x 4, then the centre and its mirror
    assert len(views) == 10 and all(v.shape == (2, 3, 4, 4) for v in views)
    assert torch.equal(views[0], x[..., :4, :4]) and torch.equal(views[6], x[..., 2:, 2:])
    assert torch.equal(views[8], x[..., 1:5, 1:5]) and torch.equal(views[1], views[0].flip(-1))
    assert torch.equal(list(tta_views(x, "flip", 6))[1], x.flip(-1))


def test_views_are_slices_of_the_batch_not_copies():
    x = torch.rand(3, 1, 10, 10)
    assert all(v.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
               for v in list(tta_views(x, "ten-crop", 8))[::2])  # the unmirrored crops share x's memory


def test_bad_modes_and_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown TTA mode 'five-crop'"):
        list(tta_views(torch.zeros(1, 1, 4, 4), "five-crop", 4))
    with pytest.raises(ConfigError, match="ten-crop size 8 is larger than the images"):
        list(tta_views(torch.zeros(1, 1, 4, 4), "ten-crop", 8))
    with pytest.raises(ConfigError, match="crop size"):
        EvalViews("ten-crop")
    assert TTA_MODES == ("none", "flip", "ten-crop")


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 1, 0])
    assert topk_correct(logits, target, (1, 2, 5)).tolist() == [1, 2, 3]


def test_scores_average_the_softmax_over_the_views():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(2, 1, 4, 4)
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert torch.allclose(scores(model, x, "flip"), expected)
    assert torch.equal(scores(model, x), model(x))  # no TTA: the logits


def test_running_sums_count_hits_loss_and_confusion():
    sums = RunningSums(torch.device("cpu"), ks=(1, 5), num_classes=3)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    target = torch.tensor([0, 1, 2, 2])
    sums.add(torch.tensor(0.5), logits, target)
    values = sums.values()
    assert values == {"loss": 0.5, "count": 4, "top1": 0.75, "top5": 1.0}
    assert sums.hits(1) == 3 and sums.hits(5) == 4
    assert sums.confusion_matrix().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_evaluate_batches_is_one_pass_with_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))  # on 4x4 crops of 6x6 images
    batches = [(torch.rand(5, 1, 6, 6), torch.randint(0, 4, (5,))) for _ in range(3)]
    sums = evaluate_batches(model, batches, device=torch.device("cpu"), views=EvalViews("ten-crop", 4),
                            num_classes=4)
    by_hand = torch.cat([scores(model, x, "ten-crop", 4).argmax(1) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert sums.values()["count"] == 15 and sums.hits(1) == int((by_hand == labels).sum())
    assert int(sums.confusion_matrix().sum()) == 15
