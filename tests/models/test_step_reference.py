"""USAIDModel's step against independent references: the EMA decay formula, and a non-finite gradient under finite
losses, or a non-finite loss on one process of several (the step must not be applied)."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from basicsr.models import build_model

from tests.conftest import tiny_options
from tests.models.test_usaid_model import batch, build
from usaid.errors import NonFiniteLossError


def test_ema_follows_the_decay_formula(image_folder, tmp_path):
    """After each step, ema <- decay * ema + (1 - decay) * weights, for every parameter (BasicSR's ``model_ema``:
    buffers are not averaged)."""
    opt = tiny_options(image_folder, usa=False)  # the EMA does not depend on the losses
    decay = opt['train']['ema_decay']
    assert decay == 0.9
    model = build(opt, tmp_path)
    expected = {k: v.detach().clone().double() for k, v in model.net_g_ema.named_parameters()}
    initial = {k: v.detach().clone() for k, v in model.net_g.named_parameters()}
    assert all(torch.equal(initial[k], v.float()) for k, v in expected.items())  # starts as a copy
    data = batch(image_folder)
    for step in (1, 2):
        model.feed_data(data)
        model.optimize_parameters(step)
        weights = dict(model.net_g.named_parameters())
        expected = {k: decay * v + (1 - decay) * weights[k].detach().double() for k, v in expected.items()}
        ema = dict(model.net_g_ema.named_parameters())
        assert all(torch.allclose(ema[k].double(), v, rtol=1e-5, atol=1e-7) for k, v in expected.items())
    moved = sum((ema[k].detach() - initial[k]).abs().sum().item() for k in initial)
    assert moved > 1e-3  # the EMA moved away from the initial weights, and not as far as the weights
    assert any(not torch.allclose(ema[k], weights[k]) for k in ema)


def infinite_gradient(model):
    """Make the gradient of one of the denoiser's weights infinite; the forward pass and the losses are untouched."""
    weight = next(model.net_g.parameters())
    return weight.register_hook(lambda grad: torch.full_like(grad, float('inf')))


def snapshot(model):
    return ({k: v.clone() for k, v in model.net_g.state_dict().items()},  # weights and BatchNorm statistics
            {k: v.clone() for k, v in model.net_g_ema.state_dict().items()},
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
             for s in model.optimizer_g.state_dict()['state'].values()])


def assert_unchanged(before, model):
    after = snapshot(model)
    for first, second in zip(before[:2], after[:2]):
        assert all(torch.equal(first[k], second[k]) for k in first)
    assert len(before[2]) == len(after[2])
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))
               for a, b in zip(before[2], after[2]) for k in a)


@pytest.mark.parametrize('action', ['stop', 'skip'])
def test_a_non_finite_gradient_with_finite_losses_is_not_applied(image_folder, tmp_path, action):
    opt = tiny_options(image_folder, usa=False)
    opt['train']['non_finite_loss'] = {'action': action, 'max_skips': 1}
    model = build(opt, tmp_path)
    data = batch(image_folder)
    model.feed_data(data)
    model.optimize_parameters(1)  # a good step first, so that the optimizer has a state to keep
    before = snapshot(model)
    hook = infinite_gradient(model)
    model.feed_data(data)
    if action == 'stop':
        with pytest.raises(NonFiniteLossError, match='iteration 2: the gradient is not finite'):
            model.optimize_parameters(2)
    else:
        model.optimize_parameters(2)
    log = model.get_current_log()
    assert all(torch.isfinite(torch.tensor(log[k])) for k in ('l_pix', 'l_total'))  # the losses were finite
    assert_unchanged(before, model)
    hook.remove()
    model.feed_data(data)
    model.optimize_parameters(3)  # the next good step trains
    assert not torch.equal(before[0]['dncnn.0.weight'], model.net_g.state_dict()['dncnn.0.weight'])
    assert all(torch.isfinite(v).all() for v in model.net_g.state_dict().values())


def _one_rank_of_a_step_with_a_non_finite_loss(rank, world_size, root, image_folder, action):
    """One of 2 gloo processes: a good step, then a step whose loss is NaN on rank 1 only, its gradient finite (a NaN
    constant added to the loss). Writes whether this rank stopped, and whether its network, EMA and optimizer state
    are unchanged."""
    dist.init_process_group('gloo', init_method=f'file://{root / "init"}', rank=rank, world_size=world_size)
    try:
        opt = tiny_options(image_folder, usa=False)
        opt['train']['non_finite_loss'] = {'action': action, 'max_skips': 1}
        opt = copy.deepcopy(opt)
        opt.update(is_train=True, dist=True, rank=rank, world_size=world_size, root_path=str(root))
        opt['path'].update(models=str(root), training_states=str(root))
        model = build_model(opt)
        data = batch(image_folder)
        model.feed_data(data)
        model.optimize_parameters(1)
        before = snapshot(model)
        if rank == 1:
            pixel_loss = model.cri_pix
            model.cri_pix = lambda output, gt: pixel_loss(output, gt) + torch.tensor(float('nan'))
        model.feed_data(data)
        try:
            model.optimize_parameters(2)
            outcome = 'went on'
        except NonFiniteLossError:
            outcome = 'stopped'
        try:
            assert_unchanged(before, model)
            outcome += ', unchanged'
        except AssertionError:
            outcome += ', changed'
        (root / f'result.{rank}').write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('action', ['stop', 'skip'])
def test_a_step_that_is_not_finite_on_one_process_is_applied_by_none(image_folder, tmp_path, action):
    """DDP averages the gradients, but each process has its own losses: a non-finite loss on one process must stop or
    skip the step on every process, or their weights part."""
    # spawned: a process forked after this one has computed can hang in torch's thread pool
    mp.start_processes(_one_rank_of_a_step_with_a_non_finite_loss, args=(2, tmp_path, image_folder, action), nprocs=2,
                       start_method='spawn')
    expected = {'stop': 'stopped, unchanged', 'skip': 'went on, unchanged'}[action]
    assert [(tmp_path / f'result.{rank}').read_text() for rank in range(2)] == [expected, expected]
