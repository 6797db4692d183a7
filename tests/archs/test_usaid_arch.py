import pytest
import torch

from tests.conftest import CHECKPOINTS
from usaid.archs import USAID


def test_default_parameter_count():
    assert sum(p.numel() for p in USAID().parameters()) == 669_312


def test_forward_returns_input_minus_predicted_noise():
    net = USAID(num_feat=8, num_layers=4).eval()
    x = torch.rand(2, 3, 17, 23)
    with torch.no_grad():
        assert torch.equal(net(x), x - net.dncnn(x))
    assert net(x).shape == x.shape


def test_original_initialisation():
    torch.manual_seed(0)
    net = USAID()
    bn_weights = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn_weights.abs().max() <= 0.025 and bn_weights.std() > 0.01
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first = net.dncnn[0].weight  # kaiming fan_in: std sqrt(2 / (3 * 3 * 3))
    assert abs(first.std().item() - (2 / 27) ** 0.5) < 0.03


def test_gray_and_no_bn_variants():
    net = USAID(num_in_ch=1, num_out_ch=1, num_layers=17, use_bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(1, 1, 8, 8)
    # the residual DnCNN written out: conv + ReLU, 15 x (conv + ReLU), conv; the image minus the predicted noise
    weights = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(w.shape[:2]) for w in weights] == [(64, 1)] + [(64, 64)] * 15 + [(1, 64)]
    r = x
    for w in weights[:-1]:
        r = torch.relu(torch.nn.functional.conv2d(r, w, padding=1))
    expected = x - torch.nn.functional.conv2d(r, weights[-1], padding=1)
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match='num_out_ch'):
        USAID(num_in_ch=3, num_out_ch=1)


@pytest.mark.skipif(not (CHECKPOINTS / 'USAID.pth').exists(), reason='released checkpoints not found')
@pytest.mark.parametrize('name', ['DnCNN', 'USAID', 'SSAID'])
def test_layout_maps_one_to_one_onto_released_checkpoints(name):
    released = torch.load(CHECKPOINTS / f'{name}.pth', map_location='cpu', weights_only=True)
    ours = {k: v for k, v in USAID().state_dict().items() if not k.endswith('num_batches_tracked')}
    renamed = {k[len('module.'):]: v for k, v in released.items()}
    assert set(renamed) == set(ours)
    assert all(renamed[k].shape == ours[k].shape for k in ours)
