"""calculate_lpips: the lpips package's own network and input conversion give the same value; usable as a metric of
any option file and in usaid-compare."""
import numpy as np
import pytest
import torch
import torchvision
from basicsr.metrics import calculate_metric

from tests.conftest import smooth_image
from usaid.metrics.lpips_metric import lpips_network

lpips = pytest.importorskip('lpips')  # the perceptual extra, installed by make install


@pytest.fixture(scope='module')
def alexnet_file(tmp_path_factory):
    """Random AlexNet weights in a local file: no test downloads torchvision's."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'alexnet.pth'
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return str(path)


def test_the_metric_is_lpips_own_computation_on_rgb_images(alexnet_file):
    rng = np.random.default_rng(0)
    clean = smooth_image(rng, 64, 72)  # BGR uint8, as BasicSR's metrics receive images
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    found = calculate_metric({'img': noisy, 'img2': clean}, {'type': 'calculate_lpips', 'crop_border': 4,
                                                             'backbone_weights': alexnet_file})
    # the package's own: its AlexNet loaded with the same weights, its own image conversion (RGB in [-1, 1])
    reference = lpips.LPIPS(net='alex', pnet_rand=True, verbose=False).eval()
    features = torchvision.models.alexnet()
    features.load_state_dict(torch.load(alexnet_file, weights_only=True))
    for stage in reference.net.children():
        for index, module in stage.named_children():
            module.load_state_dict(features.features[int(index)].state_dict())
    with torch.no_grad():
        expected = reference(lpips.im2tensor(noisy[4:-4, 4:-4, ::-1].copy()),
                             lpips.im2tensor(clean[4:-4, 4:-4, ::-1].copy())).item()
    assert found == pytest.approx(expected, rel=1e-5) and found > 0
    assert calculate_metric({'img': clean, 'img2': clean}, {'type': 'calculate_lpips',
                                                            'backbone_weights': alexnet_file}) == 0


def test_offline_without_weights_the_message_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def offline(*args, **kwargs):
        raise OSError('no network')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    lpips_network.cache_clear()
    url = torchvision.models.get_model_weights('alexnet').IMAGENET1K_V1.url
    with pytest.raises(ValueError, match='LPIPS \\(alex\\) needs torchvision\'s weights') as error:
        lpips_network('alex')
    assert url in str(error.value) and 'backbone_weights' in str(error.value)
