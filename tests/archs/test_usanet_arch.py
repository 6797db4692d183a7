import urllib.error

import pytest
import torch
import torchvision

from usaid.archs import USANet


@pytest.mark.parametrize('size, expected', [((48, 48), (12, 12)), ((50, 37), (13, 10))])
def test_logits_at_stride_four(size, expected):
    net = USANet(backbone='resnet18', pretrained='none', num_classes=7)
    assert net(torch.rand(2, 3, *size)).shape == (2, 7, *expected)


@pytest.mark.parametrize('backbone', ['resnet34', 'resnet50'])
def test_other_backbones(backbone):
    assert USANet(backbone=backbone, pretrained='none')(torch.rand(2, 3, 32, 32)).shape == (2, 21, 8, 8)


def test_same_options_give_the_same_network_whatever_the_global_seed():
    torch.manual_seed(1)
    first = USANet(backbone='resnet18', pretrained='none').state_dict()
    state_before = torch.get_rng_state()
    torch.manual_seed(2)
    second = USANet(backbone='resnet18', pretrained='none').state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    USANet(backbone='resnet18', pretrained='none')
    assert torch.equal(torch.get_rng_state(), state_before)  # construction leaves the global generator alone
    third = USANet(backbone='resnet18', pretrained='none', init_seed=5).state_dict()
    assert not torch.equal(first['classifier.weight'], third['classifier.weight'])


def test_head_initialisation():
    net = USANet(backbone='resnet18', pretrained='none')
    assert abs(net.classifier.weight.std().item() - 0.01) < 0.001
    assert torch.count_nonzero(net.classifier.bias) == 0


def test_bn_mode_is_fixed_and_train_mode_never_updates_running_statistics():
    net = USANet(backbone='resnet18', pretrained='none', bn_mode='train')
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    assert net.training
    net(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    frozen_eval = USANet(backbone='resnet18', pretrained='none', bn_mode='eval')
    frozen_eval.train()
    assert not frozen_eval.training


def test_input_normalisations_differ():
    x = torch.rand(1, 3, 32, 32)
    seed = USANet(backbone='resnet18', pretrained='none', input_norm='seed', bn_mode='eval')
    imagenet = USANet(backbone='resnet18', pretrained='none', input_norm='imagenet', bn_mode='eval')
    assert not torch.allclose(seed(x), imagenet(x))


def test_pretrained_from_a_local_torchvision_file(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / 'resnet18.pth')
    net = USANet(backbone='resnet18', pretrained=str(tmp_path / 'resnet18.pth'))
    assert torch.equal(net.stem[0].weight, resnet.conv1.weight)
    assert torch.equal(net.stages[3][1].conv2.weight, resnet.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match='does not fit a torchvision resnet50'):
        USANet(backbone='resnet50', pretrained=str(tmp_path / 'resnet18.pth'))


def test_imagenet_weights_offline_say_which_file_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(RuntimeError) as error:
        USANet(backbone='resnet18', pretrained='imagenet')
    message = str(error.value)
    assert str(tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth') in message
    assert 'https://download.pytorch.org/models/resnet18-f37072fd.pth' in message


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match='backbone'):
        USANet(backbone='vgg16')
    with pytest.raises(FileNotFoundError, match='no/such/file.pth'):
        USANet(backbone='resnet18', pretrained='no/such/file.pth')
