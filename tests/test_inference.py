"""InferenceNetwork computes the trained network's function, faster: checked on random and on released weights."""
import warnings

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics import calculate_psnr
from basicsr.utils import img2tensor, tensor2img
import torch.nn.functional as F
from torch import nn

from tests.conftest import CHECKPOINTS, KODAK24
from usaid.archs import USAID
from usaid.data.data_util import add_protocol_noise
from usaid.inference import InferenceNetwork, WinogradConv2d, resolve_conv_algo, winograd_available
from usaid.denoiser import denoise, load_denoiser


def trained_like_denoiser():
    """A small USAID whose BatchNorm layers hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    net = USAID(num_feat=16, num_layers=6)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.mark.parametrize('options', [{}, {'conv_algo': 'direct'}, {'conv_algo': 'direct', 'channels_last': False},
                                     {'fold_bn': False}])
def test_same_function_as_the_trained_network(options):
    net = trained_like_denoiser()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = InferenceNetwork(net, **options)
    image = torch.rand(2, 3, 37, 53)
    with torch.inference_mode():
        expected, result = net(image), fast(image)
    assert result.dtype == torch.float32 and result.is_contiguous()
    assert torch.allclose(result, expected, atol=2e-5), (result - expected).abs().max()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched


@pytest.mark.skipif(not winograd_available(), reason='this torch has no NNPACK')
def test_batchnorm_is_folded_and_wide_convolutions_use_winograd():
    fast = InferenceNetwork(trained_like_denoiser())
    with torch.inference_mode():
        fast(torch.rand(1, 3, 24, 24))  # the fast copy is made by the first call
    modules = list(fast.net.modules())
    assert fast.conv_algo == 'winograd'
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    # 6 layers: the 3->16 and 16->3 ones stay direct, the four 16->16 ones use Winograd
    assert sum(isinstance(m, WinogradConv2d) for m in modules) == 4
    assert sum(type(m) is nn.Conv2d for m in modules) == 2


def test_untraceable_network_is_kept_unfolded_with_a_warning():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                                      nn.Conv2d(16, 3, 3, padding=1))

        def forward(self, x):
            return self.body(x) if x.mean() > 0 else x

    net = DataDependent().eval()
    fast = InferenceNetwork(net)
    image = torch.rand(1, 3, 16, 16)
    with torch.inference_mode(), pytest.warns(UserWarning, match='BatchNorm not folded'):
        assert torch.allclose(fast(image), net(image), atol=1e-5)


def test_bad_settings_name_what_is_expected():
    with pytest.raises(ValueError, match="conv_algo 'fft'.*auto, winograd, direct"):
        resolve_conv_algo('fft', 'cpu', 'fp32')
    with pytest.raises(ValueError, match="precision 'fp16'.*fp32, bf16"):
        resolve_conv_algo('auto', 'cpu', 'fp16')
    with pytest.raises(ValueError, match='winograd needs float32 on a CPU'):
        resolve_conv_algo('winograd', 'cpu', 'bf16')
    assert resolve_conv_algo('auto', 'cpu', 'bf16') == 'direct'


@pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                    reason='released checkpoints or Kodak24 not found')
def test_released_usaid_psnr_is_kept_and_bf16_cost_is_bounded():
    """Kodak24 at sigma 25 through usaid-denoise's path: float32 within 0.01 dB of the plain forward; the opt-in
    bf16 mode loses some PSNR, but little."""
    net = load_denoiser(str(CHECKPOINTS / 'USAID.pth'))
    fast, fast_bf16 = InferenceNetwork(net), InferenceNetwork(net, precision='bf16')
    psnr = {'plain': [], 'fast': [], 'bf16': []}
    for path in sorted(KODAK24.iterdir())[:2]:
        clean = cv2.imread(str(path))[..., ::-1].astype(np.float32) / 255
        noisy = img2tensor(add_protocol_noise(clean, 25, 0).astype(np.float32), bgr2rgb=False).unsqueeze(0)
        reference = tensor2img(img2tensor(clean, bgr2rgb=False).unsqueeze(0))
        with torch.inference_mode():
            outputs = {'plain': net(noisy), 'fast': denoise(fast, noisy, tile=256), 'bf16': denoise(fast_bf16, noisy)}
        for name, output in outputs.items():
            psnr[name].append(calculate_psnr(tensor2img(output), reference, 0))
    plain, fast, bf16 = (np.mean(psnr[name]) for name in ('plain', 'fast', 'bf16'))
    assert abs(fast - plain) < 0.01, psnr
    assert 0 < plain - bf16 < 0.25, psnr


class SelfAssigning(nn.Module):
    """BatchNorm, plus an attribute assigned in ``forward``, as BasicSR's EDSR and SwinIR do (``self.mean = ...``):
    tracing it with torch.fx replaces that attribute in the traced copy."""

    def __init__(self):
        super().__init__()
        self.mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x):
        self.mean = self.mean.type_as(x)
        return self.body(x - self.mean) + self.mean


def test_a_network_that_assigns_attributes_in_forward_computes_the_same():
    torch.manual_seed(0)
    net = SelfAssigning().eval()
    net.body[1].running_mean.uniform_(-0.2, 0.2)
    fast = InferenceNetwork(net)
    image = torch.rand(2, 3, 29, 31)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # folding may be refused with a warning; the result is what counts
        result = fast(image)
        expected = net(image)
    assert torch.allclose(result, expected, atol=1e-5), (result - expected).abs().max()
    assert torch.is_tensor(net.mean)  # the original was never traced


def test_nothing_is_traced_without_batchnorm(monkeypatch):
    def no_trace(*args, **kwargs):
        raise AssertionError('torch.fx was asked to fold a network without BatchNorm')

    monkeypatch.setattr('usaid.inference.fuse', no_trace)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    fast = InferenceNetwork(net)
    image = torch.rand(1, 3, 20, 20)
    with torch.inference_mode():
        assert torch.allclose(fast(image), net(image), atol=1e-5)


class Unshuffling(nn.Module):
    """A restorer that needs heights and widths divisible by 4, like RRDBNet at scale 1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(48, 48, 3, padding=1)

    def forward(self, x):
        return x + 0.1 * F.pixel_shuffle(self.conv(F.pixel_unshuffle(x, 4)), 4)


def test_sizes_a_network_cannot_take_are_padded_and_cropped_back():
    torch.manual_seed(0)
    net = Unshuffling().eval()
    fast = InferenceNetwork(net)
    with torch.inference_mode():
        odd = torch.rand(1, 3, 37, 45)
        assert fast(odd).shape == odd.shape
        assert fast.size_multiple == 4
        fitting = torch.rand(1, 3, 36, 44)  # a size the network takes: exactly its own output
        assert torch.allclose(fast(fitting), net(fitting), atol=1e-5)
        # padding changes only pixels near the padded border: away from it the result is the network's own
        padded = F.pad(odd, (0, 3, 0, 3), mode='reflect')
        assert torch.allclose(fast(odd)[..., :28, :36], net(padded)[..., :28, :36], atol=1e-5)


@pytest.mark.parametrize('net, message', [
    (nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)), 'maps a 1x3x41x43 image to 1x3x82x86'),
    (nn.Sequential(nn.Conv2d(3, 1, 3, padding=1)), 'maps a 1x3x41x43 image to 1x1x41x43'),
    (nn.Conv3d(3, 3, 3), 'cannot run on a 1x3x41x43 image'),
])
def test_a_network_that_is_no_restorer_at_scale_1_is_refused_with_what_it_does(net, message):
    fast = InferenceNetwork(net)
    refused = f'cannot be used as a denoiser of 3-channel images: it {message}'
    with torch.inference_mode(), pytest.raises(ValueError, match=refused):
        fast(torch.rand(1, 3, 50, 50))
