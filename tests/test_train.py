"""End to end through the console scripts, in a temporary directory, on CPU."""
import csv
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TRAIN_ENTRY_POINTS, console_script, run, tiny_options, write_options
from usaid import compat


def test_usaid_train_writes_checkpoints_states_events_and_metrics(tiny_run):
    tmp_path, _ = tiny_run  # usaid-train of tiny_options, validated on 64x64 images (conftest)
    experiment = tmp_path / 'experiments' / 'e2e'
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'):
        checkpoint = torch.load(experiment / 'models' / name, weights_only=True)
        assert set(checkpoint) == {'params', 'params_ema'}
    assert sorted(p.name for p in (experiment / 'training_states').iterdir()) == ['2.state', '4.state']
    assert list((tmp_path / 'tb_logger' / 'e2e').glob('events.out.tfevents.*'))
    log = next(experiment.glob('train_e2e_*.log')).read_text()
    assert 'Validation tiny_val' in log and '# psnr:' in log
    assert 'l_pix:' in log and 'l_usa:' in log and 'l_total:' in log
    assert not list(experiment.rglob('*.partial'))  # every save was renamed into place

    events = EventAccumulator(str(tmp_path / 'tb_logger' / 'e2e'), size_guidance={'images': 0, 'scalars': 0}).Reload()
    for tag in ('losses/l_pix', 'losses/l_usa', 'losses/l_total', 'lr', 'metrics/tiny_val/psnr'):
        assert tag in events.Tags()['scalars'], events.Tags()
    printed = [float(lr) for lr in re.findall(r'lr:\(([0-9.e+-]+),\)', log)]  # the rate BasicSR prints per line
    assert [e.value for e in events.Scalars('lr')] == pytest.approx(printed, rel=1e-3) and printed[-1] == 5e-4
    for kind in ('noisy', 'output', 'gt', 'segmentation', 'uncertainty'):
        shown = events.Images(f'tiny_val/img0/{kind}')
        assert [e.step for e in shown][:2] == [2, 4] and (shown[0].width, shown[0].height) == (64, 64)  # + the final
    assert not [tag for tag in events.Tags()['images'] if tag.startswith('tiny_val/img3/')]  # tb_images: 3


@pytest.mark.parametrize('entry_point', TRAIN_ENTRY_POINTS)
def test_run_interrupted_mid_epoch_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(
        entry_point, image_folder, tmp_path, basicsr_checkout):
    # 4 images x enlarge ratio 2 / batch 2 = 4 iterations an epoch; stopped at iteration 6, in the middle of the
    # second epoch; two data workers. The same through usaid-train and through BasicSR's own train.py, on CPU.
    def options(name, total_iter):
        opt = tiny_options(image_folder, name=name, total_iter=total_iter, num_worker_per_gpu=2,
                           dataset_enlarge_ratio=2)
        return write_options(opt, tmp_path / f'{name}_{total_iter}.yml')

    command, in_checkout = TRAIN_ENTRY_POINTS[entry_point]
    cwd = basicsr_checkout if in_checkout else tmp_path
    run(command + ['-opt', str(options('straight', 10))], cwd=cwd)
    run(command + ['-opt', str(options('resumed', 6))], cwd=cwd)
    run(command + ['-opt', str(options('resumed', 10)), '--auto_resume'], cwd=cwd)

    experiments = cwd / 'experiments'
    straight = torch.load(experiments / 'straight/models/net_g_10.pth', weights_only=True)
    resumed = torch.load(experiments / 'resumed/models/net_g_10.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        assert straight[key].keys() == resumed[key].keys()
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f'{key}.{name} differs after resume'
    state = torch.load(experiments / 'resumed/training_states/10.state', weights_only=False)
    reference = torch.load(experiments / 'straight/training_states/10.state', weights_only=False)
    assert state['schedulers'] == reference['schedulers'] and state['epoch'] == reference['epoch']
    for ours, theirs in zip(state['optimizers'][0]['state'].values(), reference['optimizers'][0]['state'].values()):
        assert all(torch.equal(ours[k], theirs[k]) for k in ('exp_avg', 'exp_avg_sq', 'step'))
    logs = ''.join(p.read_text() for p in (experiments / 'resumed').glob('train_resumed_*.log'))
    assert 'Resuming training from epoch: 1, iter: 6.' in logs


def test_usaid_test_writes_results(image_folder, tmp_path, tiny_run):
    train_opt = tiny_options(image_folder)
    test_opt = {
        'name': 'tested', 'model_type': 'USAIDModel', 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': {**train_opt['datasets']['val'], 'name': 'tiny_sigma25'}},
        'network_g': train_opt['network_g'],
        'path': {'pretrain_network_g': str(tiny_run[0] / 'experiments/e2e/models/net_g_latest.pth'),
                 'strict_load_g': True, 'param_key_g': 'params'},
        'val': {'save_img': True, 'suffix': None, 'metrics': train_opt['val']['metrics']},
    }
    run([console_script('usaid-test'), '-opt', str(write_options(test_opt, tmp_path / 'test.yml'))], cwd=tmp_path)
    results = tmp_path / 'results' / 'tested'
    assert sorted(p.name for p in (results / 'visualization' / 'tiny_sigma25').iterdir()) == [
        'img0_tested.png', 'img1_tested.png']
    with open(results / 'tiny_sigma25.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['image'] for r in rows] == ['img0', 'img1'] and all(r['sigma'] == '25.0' for r in rows)
    mean_psnr = sum(float(r['psnr']) for r in rows) / 2
    assert f'# psnr: {mean_psnr:.4f}' in next(results.glob('test_tested_*.log')).read_text()


def test_torchrun_two_cpu_processes_with_gloo(image_folder, tmp_path):
    opt_file = write_options(tiny_options(image_folder, name='ddp'), tmp_path / 'ddp.yml')
    torchrun = console_script('torchrun')
    result = run([torchrun, '--standalone', '--nproc_per_node=2', '-m', 'usaid.train', '-opt', str(opt_file),
                  '--launcher', 'pytorch'], cwd=tmp_path)
    experiment = tmp_path / 'experiments' / 'ddp'
    log = next(experiment.glob('train_ddp_*.log')).read_text()
    assert 'World size (gpu number): 2' in log and log.count('Validation tiny_val') == 3
    assert (experiment / 'models' / 'net_g_4.pth').exists() and (experiment / 'training_states' / '4.state').exists()
    assert 'Traceback' not in result.stderr


def test_sigkill_during_training_then_auto_resume_loses_at_most_one_checkpoint_interval(image_folder, tmp_path):
    opt = tiny_options(image_folder, name='killed', total_iter=400)
    opt['logger']['save_checkpoint_freq'] = 3
    opt['val']['val_freq'] = 1000
    opt_file = write_options(opt, tmp_path / 'killed.yml')
    states = tmp_path / 'experiments' / 'killed' / 'training_states'
    process = subprocess.Popen([sys.executable, '-m', 'usaid.train', '-opt', str(opt_file)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (states / '9.state').exists():
            assert process.poll() is None and time.time() < deadline, 'training did not reach iteration 9'
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
    last_saved = compat.latest_training_state(str(states))
    saved_iter = int(os.path.basename(last_saved).split('.')[0])
    for checkpoint in (tmp_path / 'experiments' / 'killed' / 'models').glob('*.pth'):
        torch.load(checkpoint, weights_only=True)  # every visible checkpoint is complete
    torch.load(last_saved, weights_only=False)

    opt['train']['total_iter'] = saved_iter + 3
    run([sys.executable, '-m', 'usaid.train', '-opt', str(write_options(opt, opt_file)), '--auto_resume'],
        cwd=tmp_path)
    logs = ''.join(p.read_text() for p in (tmp_path / 'experiments' / 'killed').glob('train_killed_*.log'))
    assert f'iter: {saved_iter}.' in logs.split('Resuming training from epoch')[1].splitlines()[0]
    assert (states / f'{saved_iter + 3}.state').exists()


@pytest.mark.parametrize('program', [['-m', 'usaid.train'], ['basicsr/train.py']], ids=['usaid.train', 'train.py'])
def test_two_process_run_resumed_mid_epoch_matches_an_uninterrupted_one(program, image_folder, tmp_path,
                                                                        basicsr_checkout):
    def options(name, total_iter):
        opt = tiny_options(image_folder, name=name, total_iter=total_iter, dataset_enlarge_ratio=4)
        return write_options(opt, tmp_path / f'{name}_{total_iter}.yml')  # 2 ranks x batch 2: 4 iterations an epoch

    # BasicSR's script from its checkout (outputs in the checkout); usaid.train from anywhere else
    cwd = basicsr_checkout if program[0].endswith('.py') else tmp_path
    torchrun = [console_script('torchrun'), '--standalone', '--nproc_per_node=2'] + program + ['-opt']
    run(torchrun + [str(options('straight', 8)), '--launcher', 'pytorch'], cwd=cwd)
    run(torchrun + [str(options('resumed', 6)), '--launcher', 'pytorch'], cwd=cwd)
    run(torchrun + [str(options('resumed', 8)), '--launcher', 'pytorch', '--auto_resume'], cwd=cwd)
    straight = torch.load(cwd / 'experiments/straight/models/net_g_8.pth', weights_only=True)['params']
    resumed = torch.load(cwd / 'experiments/resumed/models/net_g_8.pth', weights_only=True)['params']
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_run_whose_loss_overflows_stops_with_the_iteration_and_keeps_its_last_checkpoint(image_folder, tmp_path):
    opt = tiny_options(image_folder, name='overflow', total_iter=6, usa=False)
    opt['train'].update(ema_decay=0, optim_g={'type': 'Adam', 'lr': 1e10})  # Adam's first step: weights +-1e10
    opt['logger']['save_checkpoint_freq'] = 1
    result = subprocess.run([console_script('usaid-train'), '-opt', str(write_options(opt, tmp_path / 'o.yml'))],
                            cwd=tmp_path, capture_output=True, text=True)
    models = tmp_path / 'experiments' / 'overflow' / 'models'
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert (f'usaid-train: iteration 2: l_pix, l_total are not finite (l_pix = inf, l_total = inf); the step was not '
            f'applied. Last checkpoint: {models / "net_g_1.pth"} (untouched).') in result.stderr
    assert sorted(p.name for p in models.iterdir()) == ['net_g_1.pth']
    weights = torch.load(models / 'net_g_1.pth', weights_only=True)['params']
    assert all(torch.isfinite(v).all() for v in weights.values())
