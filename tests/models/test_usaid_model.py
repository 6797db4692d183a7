import copy

import pytest
import torch
from basicsr.data import build_dataset
from basicsr.models import build_model

from tests.conftest import file_size_limit, tiny_options
from usaid.checkpoint import load_checkpoint
from usaid.errors import CheckpointError, NonFiniteLossError


def build(opt, tmp_path):
    opt = copy.deepcopy(opt)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, root_path=str(tmp_path))
    opt['path'].update(models=str(tmp_path), training_states=str(tmp_path))
    return build_model(opt)


def batch(root, size=2):
    train = build_dataset({**tiny_options(root)['datasets']['train'], 'phase': 'train'})
    samples = [train[i] for i in range(size)]
    return {key: torch.stack([s[key] for s in samples]) for key in ('lq', 'gt')}


def test_losses_are_logged_separately_and_frozen_network_never_changes(image_folder, tmp_path):
    model = build(tiny_options(image_folder), tmp_path)
    usa_net = model.cri_usa.net
    frozen = {k: v.clone() for k, v in usa_net.state_dict().items()}
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in usa_net.parameters()}
    weights_before = [p.clone() for p in model.net_g.parameters()]
    for step in range(1, 4):
        model.feed_data(batch(image_folder))
        model.optimize_parameters(step)
    log = model.get_current_log()
    assert set(log) == {'l_pix', 'l_usa', 'l_total', 'lr'}  # lr: for TensorBoard, which BasicSR does not give it
    assert log['l_total'] == pytest.approx(log['l_pix'] + log['l_usa'], rel=1e-5)
    assert all(torch.equal(frozen[k], v) for k, v in usa_net.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(weights_before, model.net_g.parameters()))
    assert model.lq.device == model.output.device == model.device


def test_usa_term_changes_the_denoiser_update_unless_detached(image_folder, tmp_path):
    data = batch(image_folder)

    def first_step_weights(usa_opt):
        opt = tiny_options(image_folder)
        if usa_opt is None:
            del opt['train']['usa_opt']
        else:
            opt['train']['usa_opt'].update(usa_opt)
        torch.manual_seed(0)
        model = build(opt, tmp_path)
        model.feed_data(data)
        model.optimize_parameters(1)
        return [p.detach().clone() for p in model.net_g.parameters()]

    mse_only = first_step_weights(None)
    detached = first_step_weights({'detach_input': True})
    joint = first_step_weights({'detach_input': False})
    assert all(torch.equal(a, b) for a, b in zip(mse_only, detached))
    assert any(not torch.allclose(a, b) for a, b in zip(mse_only, joint))


def test_any_basicsr_network_and_adamw(image_folder, tmp_path):
    opt = tiny_options(image_folder)
    opt['network_g'] = {'type': 'RIDNet', 'in_channels': 3, 'mid_channels': 16, 'out_channels': 3, 'num_block': 1}
    opt['train']['optim_g'] = {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01}
    model = build(opt, tmp_path)
    assert isinstance(model.optimizer_g, torch.optim.AdamW)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data(batch(image_folder))
    model.optimize_parameters(1)
    assert set(model.get_current_log()) == {'l_pix', 'l_usa', 'l_total', 'lr'}
    # AdamW's first step: w <- w (1 - lr wd) - lr g / (|g| + eps), so the step beyond the decay is at most lr
    steps = [(a.detach() - b * (1 - 1e-3 * 0.01)).abs() for a, b in zip(model.net_g.parameters(), before)]
    assert max(s.max().item() for s in steps) < 1e-3 * 1.001
    assert sum((s > 0.9e-3).sum().item() for s in steps) > 0.5 * sum(s.numel() for s in steps)  # most moved by ~lr


def test_pixel_loss_is_required(image_folder, tmp_path):
    opt = tiny_options(image_folder)
    del opt['train']['pixel_opt']
    with pytest.raises(ValueError, match='train: pixel_opt: missing; expected a mapping'):
        build(opt, tmp_path)


def test_a_resumed_run_rebuilds_exactly_the_frozen_network_that_trained(image_folder, tmp_path):
    torch.manual_seed(1)
    trained = build(tiny_options(image_folder), tmp_path)
    for step in range(1, 3):
        trained.feed_data(batch(image_folder))
        trained.optimize_parameters(step)
    torch.manual_seed(2)  # a new process, at another point of the global random stream
    rebuilt = build(tiny_options(image_folder), tmp_path)
    before, after = trained.cri_usa.net.state_dict(), rebuilt.cri_usa.net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def one_step(opt, tmp_path, data, current_iter=1):
    torch.manual_seed(0)
    model = build(opt, tmp_path)
    model.feed_data(data)
    model.optimize_parameters(current_iter)
    return model


def mse_only_step(image_folder, tmp_path, data, **train):
    """One MSE-only step with ``train`` options set. MSE only: the USA term's arg-max labels flip under any rounding
    change where the random head's logits tie, so only the MSE step can be compared tightly across code paths."""
    opt = tiny_options(image_folder, usa=False)
    opt['train'].update(train)
    return one_step(opt, tmp_path, data)


def test_channels_last_step_matches_the_nchw_step(image_folder, tmp_path):
    data = batch(image_folder)
    fast = mse_only_step(image_folder, tmp_path, data, channels_last=True)
    plain = mse_only_step(image_folder, tmp_path, data, channels_last=False)
    assert fast.net_g.dncnn[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.lq.is_contiguous(memory_format=torch.channels_last)
    assert plain.net_g.dncnn[0].weight.is_contiguous()
    assert torch.allclose(fast.loss_terms['l_total'], plain.loss_terms['l_total'], rtol=1e-5)
    for a, b in zip(fast.net_g.parameters(), plain.net_g.parameters()):  # gradients equal up to float rounding
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max()


def test_compiled_step_matches_the_eager_step(image_folder, tmp_path):
    data = batch(image_folder)
    eager = mse_only_step(image_folder, tmp_path, data, compile=False).loss_terms['l_total']
    compiled = mse_only_step(image_folder, tmp_path, data, compile=True).loss_terms['l_total']
    assert torch.allclose(compiled, eager, rtol=1e-5)


def test_bf16_options_train_close_to_fp32_and_bad_precision_is_named(image_folder, tmp_path):
    data = batch(image_folder)
    opt = tiny_options(image_folder)
    fp32 = one_step(opt, tmp_path, data)
    opt['train']['precision'] = opt['train']['usa_opt']['precision'] = 'bf16'
    bf16 = one_step(opt, tmp_path, data)
    assert bf16.output.dtype == torch.float32
    for name in ('l_pix', 'l_usa'):
        assert torch.isfinite(bf16.loss_terms[name])
        assert torch.allclose(bf16.loss_terms[name], fp32.loss_terms[name], rtol=0.05)
    opt['train']['precision'] = 'fp8'
    with pytest.raises(ValueError, match="train: precision: found 'fp8' \\(a string\\); expected one of fp32, bf16, "
                                         "fp16"):
        build(opt, tmp_path)
    opt['train']['precision'], opt['train']['usa_opt']['precision'] = 'fp32', 'half'
    with pytest.raises(ValueError, match="usa_opt:precision: found 'half'"):
        build(opt, tmp_path)


def test_validation_output_equals_the_plain_ema_network(image_folder, tmp_path):
    model = build(tiny_options(image_folder), tmp_path)
    for step in range(1, 3):
        model.feed_data(batch(image_folder))
        model.optimize_parameters(step)
    model.test()
    with torch.no_grad():
        expected = model.net_g_ema.eval()(model.lq)
    assert torch.allclose(model.output, expected, atol=2e-5)
    assert model.net_g.training  # the training network was not switched to eval


def test_tensor_metrics_score_the_same_image_as_their_numpy_twins(image_folder, tmp_path):
    """BasicSR's *_pt metrics take tensors; validation gives them the 8-bit output as a tensor, so they agree."""
    opt = tiny_options(image_folder)
    opt['val']['metrics'] = {name: {'type': f'calculate_{name}', 'crop_border': 2}
                             for name in ('psnr', 'ssim', 'psnr_pt', 'ssim_pt')}
    model = build(opt, tmp_path)
    val_set = build_dataset({**opt['datasets']['val'], 'phase': 'val'})
    loader = torch.utils.data.DataLoader(val_set, batch_size=1)
    model.nondist_validation(loader, 1, None, save_img=False)
    results = model.metric_results
    assert results['psnr_pt'] == pytest.approx(results['psnr'], abs=1e-3)
    assert results['ssim_pt'] == pytest.approx(results['ssim'], abs=5e-3)  # BasicSR's two SSIMs filter differently


def test_detached_usa_loss_is_computed_only_where_it_is_printed(image_folder, tmp_path):
    data = batch(image_folder)
    opt = tiny_options(image_folder)
    opt['train']['usa_opt']['detach_input'] = True
    opt['logger']['print_freq'] = 10
    unlogged = one_step(opt, tmp_path, data, current_iter=1)
    assert set(unlogged.loss_terms) == {'l_pix', 'l_total'}
    logged = one_step(opt, tmp_path, data, current_iter=10)
    assert set(logged.loss_terms) == {'l_pix', 'l_usa', 'l_total'} and logged.loss_terms['l_usa'] > 0
    for a, b in zip(unlogged.net_g.parameters(), logged.net_g.parameters()):  # the same update either way
        assert torch.equal(a, b)


# ---- bad input: non-finite losses, failing writes, checkpoints that do not fit --------------------------------------

def state_of(model):
    """Copies of everything a training step may change: weights, BatchNorm statistics, optimizer state."""
    net = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    optim = copy.deepcopy(model.optimizer_g.state_dict()['state'])
    return net, optim


def poisoned(data):
    lq = data['lq'].clone()
    lq[0, :, 3, 3] = float('nan')
    return {**data, 'lq': lq}


def test_a_non_finite_loss_stops_before_the_step_naming_iteration_and_terms(image_folder, tmp_path):
    data = batch(image_folder)
    model = build(tiny_options(image_folder), tmp_path)
    model.feed_data(data)
    model.optimize_parameters(1)
    model.save_network(model.net_g, 'net_g', 1)
    before = state_of(model)
    model.feed_data(poisoned(data))
    with pytest.raises(NonFiniteLossError) as error:
        model.optimize_parameters(7)
    message = str(error.value)
    assert message.startswith('iteration 7: l_pix, l_usa, l_total are not finite (l_pix = nan, l_usa = nan, '
                              'l_total = nan); the step was not applied')
    assert f'Last checkpoint: {tmp_path / "net_g_1.pth"} (untouched)' in message
    after = state_of(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_skip_drops_the_step_entirely_up_to_max_skips(image_folder, tmp_path):
    opt = tiny_options(image_folder)
    opt['train']['non_finite_loss'] = {'action': 'skip', 'max_skips': 2}
    data = batch(image_folder)
    model = build(opt, tmp_path)
    model.feed_data(data)
    model.optimize_parameters(1)
    before = state_of(model)
    ema_before = {k: v.clone() for k, v in model.net_g_ema.state_dict().items()}
    model.feed_data(poisoned(data))
    for current_iter in (2, 3):
        model.optimize_parameters(current_iter)
    net, optim = state_of(model)
    assert all(torch.equal(before[0][k], net[k]) for k in net)  # weights and BatchNorm statistics
    assert all(torch.equal(a, b) for k in optim for a, b in zip(before[1][k].values(), optim[k].values()))
    assert all(torch.equal(ema_before[k], v) for k, v in model.net_g_ema.state_dict().items())
    skipped = 'iteration 4: .* and 2 steps were skipped already \\(train:non_finite_loss:max_skips'
    with pytest.raises(NonFiniteLossError, match=skipped):
        model.optimize_parameters(4)
    model.feed_data(data)  # a good batch trains as usual
    model.non_finite_skips = 0
    model.optimize_parameters(5)
    assert not torch.equal(before[0]['dncnn.0.weight'], model.net_g.state_dict()['dncnn.0.weight'])


def test_a_failing_checkpoint_write_keeps_the_last_checkpoint(image_folder, tmp_path):
    model = build(tiny_options(image_folder), tmp_path)
    model.save_network(model.net_g, 'net_g', -1)
    saved = load_checkpoint(str(tmp_path / 'net_g_latest.pth'))['params']
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(1)
    with file_size_limit(4096), pytest.raises(CheckpointError, match='net_g_latest.pth: could not be written'):
        model.save_network(model.net_g, 'net_g', -1)
    with file_size_limit(256), pytest.raises(CheckpointError, match='5.state: could not be written'):
        model.save_training_state(0, 5)
    reloaded = load_checkpoint(str(tmp_path / 'net_g_latest.pth'))['params']
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['net_g_latest.pth']
    with torch.no_grad():
        next(model.net_g.parameters())[0] = float('inf')
    with pytest.raises(CheckpointError, match='non-finite values in dncnn.0.weight'):
        model.save_network(model.net_g, 'net_g', -1)
    kept = load_checkpoint(str(tmp_path / 'net_g_latest.pth'))['params']
    assert all(torch.equal(saved[k], v) for k, v in kept.items())


def test_pretrained_weights_of_another_architecture_are_named(image_folder, tmp_path):
    opt = tiny_options(image_folder)
    build(opt, tmp_path).save_network([build(opt, tmp_path).net_g], 'net_g', 1)
    opt['network_g']['num_feat'] = 8
    opt['path']['pretrain_network_g'] = str(tmp_path / 'net_g_1.pth')
    with pytest.raises(CheckpointError, match=r'net_g_1.pth: does not fit the network USAID: .*shape mismatch\(es\): '
                                              r'dncnn.0.weight: checkpoint \(16, 3, 3, 3\), network \(8, 3, 3, 3\)'):
        build(opt, tmp_path)
