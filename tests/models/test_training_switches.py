"""The training switches of USAIDModel (issue 19): ``precision: fp16`` with a gradient scaler, ``grad_clip``,
``accumulate``, ``logger: save_format: safetensors``, and ``non_finite_loss: check: at_log``; each alone, with the
non-finite guard and with resume. Expected values are recomputed literally (a norm, a clipped SGD step, an EMA
update) or come from the same computation done the plain way (one batch of N x B against N micro-batches of B)."""
import contextlib
import copy

import pytest
import torch

from tests.conftest import file_size_limit, tiny_options
from tests.models.test_usaid_model import batch, build, poisoned, state_of
from usaid import compat
from usaid.checkpoint import load_checkpoint
from usaid.errors import CheckpointError, NonFiniteLossError

NO_BN = {'type': 'USAID', 'num_feat': 16, 'num_layers': 5, 'use_bn': False}


def options(image_folder, usa=False, network=None, batch_size=2, **train):
    opt = tiny_options(image_folder, usa=usa, batch_size_per_gpu=batch_size)
    opt['train'].update(train)
    if network is not None:
        opt['network_g'] = dict(network)
    return opt


def seeded_model(opt, tmp_path):
    torch.manual_seed(0)
    return build(opt, tmp_path)


def weights(model):
    return {k: v.detach().clone() for k, v in model.net_g.state_dict().items()}


def ema(model):
    return {k: v.detach().clone() for k, v in model.net_g_ema.state_dict().items()}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first_conv_dtype(net):
    """The dtype a network's first convolution computes in, recorded by a forward hook."""
    seen = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    return seen


# ---- precision: fp16 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('usa_precision,usa_dtype', [('fp32', torch.float32), ('bf16', torch.bfloat16)])
def test_fp16_runs_the_denoiser_in_float16_and_the_usa_network_in_its_own_precision(image_folder, tmp_path,
                                                                                    usa_precision, usa_dtype):
    data = batch(image_folder)
    reference = seeded_model(options(image_folder, usa=True), tmp_path)
    reference.feed_data(data)
    reference.optimize_parameters(1)
    opt = options(image_folder, usa=True, precision='fp16')
    opt['train']['usa_opt']['precision'] = usa_precision
    model = seeded_model(opt, tmp_path)
    denoiser, usa = first_conv_dtype(model.net_g), first_conv_dtype(model.cri_usa.net)
    before = weights(model)
    model.feed_data(data)
    model.optimize_parameters(1)
    assert denoiser == [torch.float16] and usa == [usa_dtype]
    assert model.output.dtype == torch.float32
    for name in ('l_pix', 'l_usa'):  # fp16 rounding only: the same losses within a few per cent
        assert torch.allclose(model.loss_terms[name], reference.loss_terms[name], rtol=0.05)
    for step in range(2, 12):  # the first steps may overflow at the initial scale 2^16: the scaler halves it
        if not equal(before, weights(model)):
            break
        model.optimize_parameters(step)
    assert not equal(before, weights(model)) and model.scaler.get_scale() <= 2.0 ** 16


def test_an_fp16_overflow_is_skipped_by_the_scaler_not_stopped_as_non_finite(image_folder, tmp_path):
    model = seeded_model(options(image_folder, precision='fp16', network=None), tmp_path)
    model.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 40)  # float16 gradients overflow to inf
    data = batch(image_folder)
    model.feed_data(data)
    net, optim = state_of(model)
    ema_before = ema(model)
    model.optimize_parameters(1)  # default non_finite_loss: stop; the losses are finite, the gradient overflowed
    assert model.non_finite_skips == 0 and model.scaler.get_scale() == 2.0 ** 39
    net_after, optim_after = state_of(model)
    assert equal(net, net_after)  # weights and BatchNorm statistics
    assert not optim_after and equal(ema_before, ema(model))  # no optimizer step, no EMA move
    for step in range(2, 40):  # the scaler halves the scale until the gradient fits, then trains
        model.optimize_parameters(step)
        if not equal(net, weights(model)):
            break
    assert not equal(net, weights(model)) and not equal(ema_before, ema(model))
    assert model.scaler.get_scale() < 2.0 ** 39


@pytest.mark.parametrize('action', ['stop', 'skip'])
def test_fp16_non_finite_loss_is_our_stop_or_skip_and_leaves_the_scaler_as_it_was(image_folder, tmp_path, action):
    model = seeded_model(options(image_folder, precision='fp16', non_finite_loss={'action': action}), tmp_path)
    data = batch(image_folder)
    model.feed_data(data)
    model.optimize_parameters(1)
    scaler, (net, optim) = model.scaler.state_dict(), state_of(model)
    model.feed_data(poisoned(data))
    with pytest.raises(NonFiniteLossError, match='iteration 2: l_pix, l_total are not finite') if action == 'stop' \
            else contextlib.nullcontext():
        model.optimize_parameters(2)
    assert model.scaler.state_dict() == scaler
    net_after, optim_after = state_of(model)
    assert equal(net, net_after)
    assert all(torch.equal(a, b) for k in optim for a, b in zip(optim[k].values(), optim_after[k].values()))
    model.feed_data(data)  # the next good step trains: the skipped one left no unscaled gradient behind
    model.optimize_parameters(3)
    assert not equal(net, weights(model))


def resume_from(image_folder, tmp_path, opt, iteration):
    """A model built as a resumed run builds it: weights from the run's checkpoint, then its training state."""
    opt = copy.deepcopy(opt)
    opt['path']['pretrain_network_g'] = str(tmp_path / f'net_g_{iteration}.pth')
    model = seeded_model(opt, tmp_path)
    model.resume_training(compat.load_training_state(str(tmp_path / f'{iteration}.state'), torch.device('cpu')))
    return model


def test_fp16_resume_restores_the_scaler_and_continues_exactly(image_folder, tmp_path):
    opt = options(image_folder, precision='fp16')
    four = batch(image_folder, size=4)
    data = [{k: v[start:start + 2] for k, v in four.items()} for start in (0, 2, 1, 0)]

    def steps(model, iterations):
        for i in iterations:
            model.feed_data(data[i - 1])
            model.optimize_parameters(i)

    straight = seeded_model(opt, tmp_path)
    straight.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 14, growth_interval=1)  # the scale moves
    steps(straight, range(1, 5))
    interrupted = seeded_model(opt, tmp_path)
    interrupted.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 14, growth_interval=1)
    steps(interrupted, range(1, 3))
    interrupted.save(0, 2)
    assert torch.load(tmp_path / '2.state', weights_only=True)['grad_scaler'] == interrupted.scaler.state_dict()
    resumed = resume_from(image_folder, tmp_path, opt, 2)
    assert resumed.scaler.state_dict() == interrupted.scaler.state_dict()
    steps(resumed, range(3, 5))
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert equal(weights(straight), weights(resumed)) and equal(ema(straight), ema(resumed))


# ---- grad_clip ------------------------------------------------------------------------------------------------------

def sgd_step(image_folder, tmp_path, data, **train):
    """One SGD step (lr 0.1, no momentum: the update is -0.1 x the applied gradient) without EMA; the model and the
    gradient the step applied, recovered from the weights."""
    model = seeded_model(options(image_folder, optim_g={'type': 'SGD', 'lr': 0.1}, ema_decay=0, **train), tmp_path)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data(data)
    model.optimize_parameters(1)
    return model, [(b - p.detach()) / 0.1 for b, p in zip(before, model.net_g.parameters())]


@pytest.mark.parametrize('norm_type', [2, 'inf'])
def test_grad_clip_scales_the_gradient_to_max_norm_and_logs_the_norm_before(image_folder, tmp_path, norm_type):
    data = batch(image_folder)
    _, plain = sgd_step(image_folder, tmp_path, data)
    flat = torch.cat([g.flatten() for g in plain]).double()
    norm = flat.abs().max() if norm_type == 'inf' else flat.pow(2).sum().sqrt()
    max_norm = float(norm) / 10
    model, clipped = sgd_step(image_folder, tmp_path, data, grad_clip={'max_norm': max_norm, 'norm_type': norm_type})
    for a, b in zip(clipped, plain):  # clip_grad_norm_'s factor: max_norm / (norm + 1e-6); weights' rounding
        expected = b.double() * max_norm / (float(norm) + 1e-6)
        assert (a.double() - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert model.get_current_log()['grad_norm'] == pytest.approx(float(norm), rel=1e-4)
    below = {'max_norm': float(norm) * 2, 'norm_type': norm_type}
    _, unclipped = sgd_step(image_folder, tmp_path, data, grad_clip=below)
    assert all(torch.equal(a, b) for a, b in zip(unclipped, plain))  # below max_norm: the same step


def test_grad_clip_with_fp16_clips_the_unscaled_gradient(image_folder, tmp_path):
    data = batch(image_folder)
    model, applied = sgd_step(image_folder, tmp_path, data, precision='fp16', grad_clip={'max_norm': 1e-3})
    applied_norm = torch.cat([g.flatten() for g in applied]).double().pow(2).sum().sqrt()
    assert float(applied_norm) == pytest.approx(1e-3, rel=1e-2)  # not 1e-3 / 65536: clipped after unscale_
    log = model.get_current_log()
    assert log['grad_norm'] > 1e-3 and log['grad_scale'] == 2.0 ** 16


# ---- accumulate -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('pixel_opt', [{'type': 'BatchSSELoss', 'loss_weight': 0.5}, {'type': 'MSELoss'}],
                         ids=['sum/2N', 'mean'])
def test_one_step_of_n_x_b_equals_n_accumulated_micro_batches(image_folder, tmp_path, pixel_opt):
    data = batch(image_folder, size=4)
    models = {}
    for parts in (1, 2, 4):
        opt = options(image_folder, network=NO_BN, batch_size=4, accumulate=parts, pixel_opt=pixel_opt)
        models[parts] = seeded_model(opt, tmp_path)
        models[parts].feed_data(data)
        models[parts].optimize_parameters(1)
    whole = models[1]
    for parts in (2, 4):
        model = models[parts]
        for name in ('l_pix', 'l_total'):
            assert torch.allclose(model.loss_terms[name], whole.loss_terms[name], rtol=1e-5)
        for a, b in zip(model.net_g.parameters(), whole.net_g.parameters()):
            assert (a.grad - b.grad).abs().max() <= 1e-5 * b.grad.abs().max()
            assert torch.allclose(a, b, atol=1e-6)  # Adam's first step, from the same gradient
        assert model.output.shape == whole.output.shape == data['lq'].shape
        assert torch.allclose(model.output, whole.output, atol=1e-6)
        assert all(s['step'] == 1 for s in model.optimizer_g.state.values())  # one optimizer step, one iteration
        for e, e1 in zip(model.net_g_ema.parameters(), whole.net_g_ema.parameters()):
            assert torch.allclose(e, e1, atol=1e-6)


def test_accumulate_updates_the_ema_once_per_step_and_skips_ddp_sync_on_all_but_the_last(image_folder, tmp_path):
    model = seeded_model(options(image_folder, network=NO_BN, batch_size=4, accumulate=4), tmp_path)
    entered = []

    @contextlib.contextmanager
    def no_sync():  # what DistributedDataParallel offers: no gradient all-reduce inside
        entered.append(1)
        yield

    model.net_g.no_sync = no_sync
    ema_before = ema(model)
    model.feed_data(batch(image_folder, size=4))
    model.optimize_parameters(1)
    assert len(entered) == 3
    net = model.net_g.state_dict()
    for k, v in model.net_g_ema.state_dict().items():  # BasicSR's rule, once: ema = 0.9 ema + 0.1 weights
        assert torch.allclose(v, 0.9 * ema_before[k] + 0.1 * net[k], atol=1e-7)


def test_accumulate_must_divide_the_batch(image_folder, tmp_path):
    opt = options(image_folder, accumulate=3)
    with pytest.raises(ValueError, match='train: accumulate: 3 does not divide datasets:train:batch_size_per_gpu 2'):
        build(opt, tmp_path)
    from tests.conftest import option_problems
    assert any(p.startswith('train:accumulate: found 3, which does not divide') for p in option_problems(opt))


# ---- non_finite_loss: check ----------------------------------------------------------------------------------------

def test_at_log_reads_nothing_on_the_host_during_the_step(image_folder, tmp_path, monkeypatch):
    data = batch(image_folder)
    models = {check: seeded_model(options(image_folder, optim_g={'type': 'SGD', 'lr': 0.1}, ema_decay=0,
                                          non_finite_loss={'check': check}), tmp_path)
              for check in ('every_step', 'at_log')}

    def host_read(*args):
        raise AssertionError('a tensor was read on the host during the step')

    for method in ('item', '__bool__', '__int__', '__float__'):
        monkeypatch.setattr(torch.Tensor, method, host_read)
    for model in models.values():
        model.feed_data(data)
    models['at_log'].optimize_parameters(1)
    with pytest.raises(AssertionError, match='read on the host'):  # the trap works: every_step syncs once
        models['every_step'].optimize_parameters(1)
    monkeypatch.undo()
    assert set(models['at_log'].get_current_log()) == {'l_pix', 'l_total', 'lr'}


def test_at_log_stops_at_the_print_naming_the_first_bad_iteration_and_never_saves_after_it(image_folder, tmp_path):
    model = seeded_model(options(image_folder, non_finite_loss={'check': 'at_log'}), tmp_path)
    data = batch(image_folder)
    model.feed_data(data)
    model.optimize_parameters(1)
    model.save(0, 1)
    for step, good in ((2, True), (3, False), (4, False), (5, True)):
        model.feed_data(data if good else poisoned(data))
        model.optimize_parameters(step)  # applied: nothing is read on the host
    message = (r'iteration 3: a loss or the gradient was not finite; found before a checkpoint was written.*Last '
               r'checkpoint: .*net_g_1.pth \(untouched\)')
    with pytest.raises(NonFiniteLossError, match=message):
        model.save(0, 5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['1.state', 'net_g_1.pth']
    with pytest.raises(NonFiniteLossError, match='iteration 3: .*; the run stopped at iteration 5, with the steps'):
        model.get_current_log()


@pytest.mark.parametrize('grad_clip,message', [
    ({'max_norm': 1, 'norm_type': 'max'}, "grad_clip:norm_type: found 'max' \\(a string\\); expected a number or "
                                          'one of inf'),
    ({'max_norm': 1, 'norm_type': 0.5}, 'grad_clip:norm_type: found 0.5; expected a number >= 1'),
    ({'norm_type': 2}, 'grad_clip:max_norm: missing; expected a number'),
    ({'max_norm': 0}, 'grad_clip:max_norm: found 0, which clips every gradient to nothing'),
    (0.5, 'grad_clip: found 0.5 \\(a number\\); expected a mapping'),
])
def test_a_bad_grad_clip_is_named(image_folder, tmp_path, grad_clip, message):
    with pytest.raises(ValueError, match=message):
        build(options(image_folder, grad_clip=grad_clip), tmp_path)


def test_at_log_cannot_skip(image_folder, tmp_path):
    with pytest.raises(ValueError, match='train: non_finite_loss:check: at_log cannot skip a step'):
        build(options(image_folder, non_finite_loss={'check': 'at_log', 'action': 'skip'}), tmp_path)


# ---- logger: save_format: safetensors -------------------------------------------------------------------------------

def test_safetensors_checkpoints_are_written_atomically_and_load_back(image_folder, tmp_path):
    opt = options(image_folder)
    opt['logger']['save_format'] = 'safetensors'
    model = seeded_model(opt, tmp_path)
    model.feed_data(batch(image_folder))
    model.optimize_parameters(1)
    model.save(0, 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['2.state', 'net_g_2.safetensors']
    assert (tmp_path / 'net_g_2.safetensors').read_bytes()[8:9] == b'{'  # a safetensors header, not a zip
    assert 'optimizers' in compat.load_training_state(str(tmp_path / '2.state'), torch.device('cpu'))
    saved = load_checkpoint(str(tmp_path / 'net_g_2.safetensors'))
    assert equal(saved['params'], weights(model)) and equal(saved['params_ema'], ema(model))

    opt['path']['pretrain_network_g'] = str(tmp_path / 'net_g_2.safetensors')  # path:pretrain_network_g reads it
    torch.manual_seed(5)
    loaded = build(opt, tmp_path)
    assert equal(weights(loaded), weights(model)) and equal(ema(loaded), ema(model))

    with torch.no_grad():
        next(model.net_g.parameters()).add_(1)
    with file_size_limit(4096), pytest.raises(CheckpointError, match='net_g_2.safetensors: could not be written'):
        model.save_network(model.net_g, 'net_g', 2)
    assert equal(load_checkpoint(str(tmp_path / 'net_g_2.safetensors'))['params'], saved['params'])
    assert not list(tmp_path.glob('.*partial'))

    model.feed_data(poisoned(batch(image_folder)))
    with pytest.raises(NonFiniteLossError, match=r'Last checkpoint: .*net_g_2.safetensors \(untouched\)'):
        model.optimize_parameters(3)


# ---- all switches through usaid-train, interrupted and resumed ------------------------------------------------------

def test_usaid_train_with_every_switch_resumes_exactly_and_its_safetensors_load_everywhere(image_folder, tmp_path):
    import usaid
    from tests.conftest import console_script, run, write_options

    def options(name, total_iter):  # fp16 (USA network in bf16), 2 micro-batches of 2, clipping, safetensors, EMA
        opt = tiny_options(image_folder, name=name, total_iter=total_iter, batch_size_per_gpu=4)
        opt['train'].update(precision='fp16', accumulate=2, grad_clip={'max_norm': 0.5})
        opt['train']['usa_opt']['precision'] = 'bf16'
        opt['logger']['save_format'] = 'safetensors'
        return write_options(opt, tmp_path / f'{name}_{total_iter}.yml')

    train = [console_script('usaid-train'), '-opt']
    run(train + [str(options('straight', 4))], cwd=tmp_path)
    run(train + [str(options('resumed', 2))], cwd=tmp_path)
    run(train + [str(options('resumed', 4)), '--auto_resume'], cwd=tmp_path)  # from 2.state and net_g_2.safetensors

    experiments = tmp_path / 'experiments'
    models = experiments / 'resumed' / 'models'
    assert sorted(p.name for p in models.iterdir()) == [
        'net_g_2.safetensors', 'net_g_4.safetensors', 'net_g_latest.safetensors']
    straight = load_checkpoint(str(experiments / 'straight/models/net_g_4.safetensors'))
    resumed = load_checkpoint(str(models / 'net_g_4.safetensors'))
    for key in ('params', 'params_ema'):
        assert equal(straight[key], resumed[key]), f'{key} differs after resume'
    states = [torch.load(experiments / run_name / 'training_states/4.state', weights_only=True)
              for run_name in ('straight', 'resumed')]
    assert states[0]['grad_scaler'] == states[1]['grad_scaler'] and states[0]['schedulers'] == states[1]['schedulers']
    log = ''.join(p.read_text() for p in (experiments / 'resumed').glob('train_resumed_*.log'))
    assert 'Resuming training from epoch' in log and f'Loading USAID model from {models / "net_g_2.safetensors"}' in log
    assert 'grad_norm:' in log and 'grad_scale:' in log
    net = usaid.load_denoiser(experiments / 'resumed', device='cpu')  # a tool's view: the folder's latest, EMA
    latest = load_checkpoint(str(models / 'net_g_latest.safetensors'))['params_ema']
    assert equal({k[len('plain.'):]: v for k, v in net.state_dict().items() if k.startswith('plain.')}, latest)
