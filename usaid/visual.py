"""Colours for the USA module's maps, shared by ``usaid-visualize`` and TensorBoard: the same class gets the same
colour everywhere. matplotlib is imported here only, when a picture is made."""
import numpy as np


def class_colours(num_classes):
    """A matplotlib colormap of K distinct colours: evenly spaced hues, alternately bright and dark."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    hues = plt.get_cmap('hsv')(np.linspace(0, 1, num_classes, endpoint=False))
    hues[1::2, :3] *= 0.6
    return ListedColormap(hues)


def colour_maps(labels, uncertainty, num_classes):
    """H x W x 3 uint8 RGB pictures of a label map (:func:`class_colours`) and of an uncertainty map in [0, 1]
    (matplotlib's magma, dark = confident)."""
    import matplotlib.pyplot as plt

    segmentation = class_colours(num_classes)(np.asarray(labels), bytes=True)[..., :3]
    confidence = plt.get_cmap('magma')(np.clip(np.asarray(uncertainty), 0, 1), bytes=True)[..., :3]
    return segmentation, confidence
