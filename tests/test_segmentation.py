"""Confusion-matrix scores against values computed by hand."""
import math

import torch

from usaid.segmentation import IGNORE_INDEX, confusion_matrix, segmentation_scores


def test_miou_by_hand_with_ignored_pixels_and_absent_classes():
    # ground truth (255: ignored) and prediction, 2 x 4 pixels, classes 0..3 of 5
    target = torch.tensor([[0, 0, 1, 1], [2, IGNORE_INDEX, 1, 2]])
    prediction = torch.tensor([[0, 1, 1, 1], [0, 4, 1, 2]])
    confusion = confusion_matrix(prediction, target, num_classes=5)
    # rows = truth, columns = prediction; the ignored pixel (predicted 4) is not counted
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in ((0, 0), (0, 1), (1, 1), (1, 1), (2, 0), (1, 1), (2, 2)):
        expected[t, p] += 1
    assert torch.equal(confusion, expected)
    scores = segmentation_scores(confusion)
    # class 0: TP 1, FP 1 (a 2 predicted 0), FN 1 (a 0 predicted 1) -> 1/3
    # class 1: TP 3, FP 1, FN 0 -> 3/4;  class 2: TP 1, FP 0, FN 1 -> 1/2
    # class 3: neither in truth nor predicted -> no IoU;  class 4: predicted only on the ignored pixel -> no IoU
    assert scores['iou'][:3] == [1 / 3, 3 / 4, 1 / 2] and math.isnan(scores['iou'][3]) and math.isnan(scores['iou'][4])
    assert scores['miou'] == (1 / 3 + 3 / 4 + 1 / 2) / 3
    assert scores['pixel_accuracy'] == 5 / 7


def test_a_class_predicted_but_absent_from_the_truth_counts_as_zero():
    confusion = confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0]), num_classes=2)
    scores = segmentation_scores(confusion)
    assert scores['iou'] == [0.5, 0.0] and scores['miou'] == 0.25 and scores['pixel_accuracy'] == 0.5


def test_accumulating_over_images_equals_one_big_image():
    generator = torch.Generator().manual_seed(0)
    targets = [torch.randint(0, 4, (5, 7), generator=generator) for _ in range(3)]
    predictions = [torch.randint(0, 4, (5, 7), generator=generator) for _ in range(3)]
    summed = sum(confusion_matrix(p, t, 4) for p, t in zip(predictions, targets))
    assert torch.equal(summed, confusion_matrix(torch.cat(predictions), torch.cat(targets), 4))
