"""Semantic segmentation scores from a confusion matrix: the PASCAL VOC measures (mIoU over 21 classes, per-class
IoU, pixel accuracy), accumulated over a dataset on any device."""
import torch

VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')
IGNORE_INDEX = 255  # VOC's object borders and difficult regions


def confusion_matrix(prediction, target, num_classes, ignore_index=IGNORE_INDEX):
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction, of label maps of any shape.
    Pixels whose target is ``ignore_index`` (or outside ``[0, num_classes)``) are not counted."""
    target, prediction = target.reshape(-1).long(), prediction.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pairs = target[keep] * num_classes + prediction[keep].clamp(0, num_classes - 1)
    return torch.bincount(pairs, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(confusion):
    """``{'miou', 'pixel_accuracy', 'iou'}`` of a confusion matrix. IoU of class c = TP / (TP + FP + FN); a class
    that is neither in the ground truth nor predicted has no IoU (NaN) and is left out of the mean, as VOC's
    evaluation of a subset does."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float('nan')))
    present = ~iou.isnan()
    return {'miou': float(iou[present].mean()) if present.any() else float('nan'),
            'pixel_accuracy': float(true_positive.sum() / confusion.sum().clamp(min=1)),
            'iou': iou.tolist()}
