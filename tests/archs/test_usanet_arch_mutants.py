"""Tests written for mutants of usaid/archs/usanet_arch.py that survived `make mutation` (docs/testing.md#mutation-
testing): a backbone weights file is refused for any one kind of misfit alone, and the message quotes five keys."""
import re

import pytest
import torch
import torchvision

from usaid.archs import USANet


@pytest.fixture
def resnet18_state():
    return torchvision.models.resnet18(weights=None).state_dict()


def refusal(tmp_path, state):
    torch.save(state, tmp_path / 'weights.pth')
    with pytest.raises(ValueError, match='does not fit a torchvision resnet18') as error:
        USANet(backbone='resnet18', pretrained=str(tmp_path / 'weights.pth'))
    return str(error.value)


def quoted(message, what):
    """The keys the message lists after ``what``, e.g. ``missing keys ['a', 'b']``."""
    return re.findall(r"'([^']+)'", re.search(rf'{what} \[([^\]]*)\]', message).group(1))


def test_each_kind_of_misfit_alone_is_refused(tmp_path, resnet18_state):
    only_missing = {k: v for k, v in resnet18_state.items() if k != 'layer1.0.conv1.weight'}
    assert quoted(refusal(tmp_path, only_missing), 'missing keys') == ['stages.0.0.conv1.weight']
    only_unexpected = {**resnet18_state, 'layer1.0.extra': torch.zeros(1)}
    assert quoted(refusal(tmp_path, only_unexpected), 'unexpected keys') == ['stages.0.0.extra']
    only_wrong = {**resnet18_state, 'layer2.0.conv1.weight': torch.zeros(1, 1, 1, 1)}
    assert quoted(refusal(tmp_path, only_wrong), 'wrong shapes') == ['stages.1.0.conv1.weight']


def test_the_message_quotes_the_first_five_keys_of_each_kind(tmp_path, resnet18_state):
    layer4 = sorted(k for k in resnet18_state if k.startswith('layer4.0.'))[:7]
    state = {k: v for k, v in resnet18_state.items() if k not in layer4}  # 7 missing
    state.update({f'layer1.0.extra{i}': torch.zeros(1) for i in range(7)})  # 7 unexpected
    wrong = sorted(k for k in resnet18_state if k.startswith('layer3.') and k.endswith('weight'))[:7]
    state.update({k: torch.zeros(2) for k in wrong})  # 7 wrong shapes
    message = refusal(tmp_path, state)
    assert quoted(message, 'missing keys') == sorted(f'stages.3.{k[len("layer4."):]}' for k in layer4)[:5]
    assert quoted(message, 'unexpected keys') == sorted(f'stages.0.0.extra{i}' for i in range(7))[:5]
    assert quoted(message, 'wrong shapes') == sorted(f'stages.2.{k[len("layer3."):]}' for k in wrong)[:5]


@pytest.mark.parametrize('batch, height, width', [(1, 32, 32), (1, 33, 32), (1, 32, 33), (1, 17, 17), (1, 64, 16),
                                                  (1, 20, 40), (2, 8, 8), (1, 1, 1), (3, 1, 1), (1, 96, 96)])
def test_batch_statistics_problem_is_exactly_when_the_network_cannot_normalise(batch, height, width):
    from usaid.archs.usanet_arch import batch_statistics_problem
    net = USANet(backbone='resnet18', pretrained='none', bn_mode='train')
    try:
        net(torch.rand(batch, 3, height, width))
        fails = False
    except ValueError as error:  # PyTorch: 'Expected more than 1 value per channel when training'
        assert 'more than 1 value per channel' in str(error)
        fails = True
    problem = batch_statistics_problem('train', batch, height, width)
    assert (problem is not None) == fails, problem
    assert batch_statistics_problem('eval', batch, height, width) is None
    if fails:
        assert f'cannot segment {batch} image(s) of {height}x{width}' in problem
