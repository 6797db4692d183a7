import torch
from basicsr.models.base_model import BaseModel
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

import usaid
from usaid import compat


def test_components_are_registered_in_basicsr():
    assert ARCH_REGISTRY.get('USAID') is usaid.archs.USAID
    assert ARCH_REGISTRY.get('USANet') is usaid.archs.USANet
    assert LOSS_REGISTRY.get('USALoss') is usaid.losses.USALoss
    assert LOSS_REGISTRY.get('BatchSSELoss') is usaid.losses.BatchSSELoss
    assert MODEL_REGISTRY.get('USAIDModel') is usaid.models.USAIDModel
    assert DATASET_REGISTRY.get('GaussianNoiseDataset') is usaid.data.GaussianNoiseDataset
    # BasicSR's own components are still there
    assert 'RIDNet' in ARCH_REGISTRY and 'MSELoss' in LOSS_REGISTRY and 'SRModel' in MODEL_REGISTRY


def test_compat_fixes_are_installed_through_basicsr_modules():
    import basicsr.train
    import basicsr.utils.options
    from torchvision.transforms.functional import rgb_to_grayscale
    from torchvision.transforms.functional_tensor import rgb_to_grayscale as aliased

    assert aliased is rgb_to_grayscale
    assert basicsr.utils.options.init_dist is compat.init_dist
    assert basicsr.train.load_resume_state is compat.load_resume_state
    assert BaseModel.model_to_device is compat.model_to_device


def test_optimizers_beyond_adam():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(BaseModel.get_optimizer(None, 'AdamW', params, 1e-3, weight_decay=0.01), torch.optim.AdamW)
    assert isinstance(BaseModel.get_optimizer(None, 'SGD', params, 1e-3), torch.optim.SGD)
    try:
        BaseModel.get_optimizer(None, 'Adamm', params, 1e-3)
    except ValueError as error:
        assert "optim_g: type: 'Adamm'" in str(error) and 'AdamW' in str(error)
    else:
        raise AssertionError('an unknown optimizer must be refused')


def test_latest_training_state_ignores_partial_files(tmp_path):
    for name in ('2.state', '10.state', '12.state.tmp', 'notes.txt'):
        (tmp_path / name).write_bytes(b'')
    assert compat.latest_training_state(str(tmp_path)) == str(tmp_path / '10.state')
    assert compat.latest_training_state(str(tmp_path / 'missing')) is None
