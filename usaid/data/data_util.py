"""Data helpers shared by the dataset and the tools (as BasicSR keeps its own in ``basicsr/data/data_util.py``): which
files are images, and the literature's test noise."""
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

# The evaluation protocol seeds its noise with 0 for every image (np.random.seed(0) in the literature's test scripts)
PROTOCOL_NOISE_SEED = 0


def add_protocol_noise(rgb, sigma, seed=PROTOCOL_NOISE_SEED):
    """The literature's test noise: ``rgb + normal(0, sigma / 255)`` drawn over the whole H x W x C float array by a
    generator seeded with ``seed`` (the numbers of ``np.random.seed(seed); np.random.normal(...)``), unclipped."""
    return rgb + np.random.RandomState(seed).normal(0, sigma / 255., rgb.shape)
