"""usaid/data/data_util.py: the literature's test noise, which the dataset, usaid-compare, taskeval, segeval,
usaid-denoise --add-noise and usaid-visualize share."""
import numpy as np

from usaid.data.data_util import add_protocol_noise


def literal_protocol_noise(rgb, sigma, seed):
    """REFERENCE section 3: ``np.random.seed(seed)``, then ``rgb + np.random.normal(0, sigma / 255, rgb.shape)``."""
    np.random.seed(seed)
    return rgb + np.random.normal(0, sigma / 255., rgb.shape)


def test_the_noise_is_the_literature_draw_unclipped_and_defaults_to_seed_0():
    rgb = np.linspace(0, 1, 5 * 4 * 3).reshape(5, 4, 3)
    assert np.array_equal(add_protocol_noise(rgb, 25), literal_protocol_noise(rgb, 25, 0))
    assert np.array_equal(add_protocol_noise(rgb, 50, seed=7), literal_protocol_noise(rgb, 50, 7))
    assert add_protocol_noise(rgb, 50).max() > 1 and add_protocol_noise(rgb, 50).min() < 0


def test_the_global_numpy_generator_is_left_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    add_protocol_noise(np.zeros((2, 2, 3)), 25)
    assert np.array_equal(np.random.get_state()[1], state)
