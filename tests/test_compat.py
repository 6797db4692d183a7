"""usaid.compat's fixes for GPUs and clusters, on CPU: the GPU side is simulated where it only decides (which backend,
which device), and several processes run with gloo where it computes."""
import csv
import datetime
import logging
import os
import shutil
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import options as basicsr_options

from tests.conftest import console_script, run, tiny_options, write_options
from usaid import compat
from usaid.data.resumable_sampler import ResumableSampler
from usaid.errors import CheckpointError, OptionError


def parse(option_file, *arguments, is_train=True):
    """BasicSR's parse_options, as every pipeline calls it, on ``option_file`` with command-line ``arguments``."""
    argv = sys.argv
    sys.argv = ['train.py', '-opt', str(option_file), *arguments]
    try:
        return basicsr_options.parse_options(str(option_file.parent), is_train=is_train)[0]
    finally:
        sys.argv = argv


@pytest.fixture
def basicsr_log():
    """The messages BasicSR's logger receives during the test (it does not propagate once BasicSR set it up)."""
    handler = logging.Handler()
    handler.messages = []
    handler.emit = lambda record: handler.messages.append(record.getMessage())
    logging.getLogger('basicsr').addHandler(handler)
    yield handler.messages
    logging.getLogger('basicsr').removeHandler(handler)


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine that reports 4 GPUs; the process group and device calls are recorded, not made."""
    calls = {'init_process_group': [], 'set_device': []}
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'set_device', calls['set_device'].append)
    monkeypatch.setattr(dist, 'init_process_group', lambda **kwargs: calls['init_process_group'].append(kwargs))
    monkeypatch.setattr(compat, '_destroy_process_group_at_exit', lambda: None)
    monkeypatch.setenv('LOCAL_RANK', '3')
    return calls


@pytest.mark.parametrize('num_gpu, backend, device', [(0, 'gloo', []), ('auto', 'nccl', [3]), (1, 'nccl', [3])])
def test_the_backend_and_device_follow_num_gpu_on_a_machine_with_gpus(num_gpu, backend, device, gpu_machine,
                                                                      image_folder, tmp_path):
    opt = tiny_options(image_folder, dataset_enlarge_ratio=8)  # a batch for each of 4 GPUs
    opt.update(num_gpu=num_gpu, dist_params={'timeout': 5400})
    parse(write_options(opt, tmp_path / 'o.yml'), '--launcher', 'pytorch')
    assert gpu_machine['init_process_group'] == [{'backend': backend, 'timeout': datetime.timedelta(hours=1.5)}]
    assert gpu_machine['set_device'] == device  # LOCAL_RANK, and no CUDA device for CPU processes


def test_nccl_for_cpu_processes_is_refused_before_any_process_group(gpu_machine, image_folder, tmp_path):
    opt = tiny_options(image_folder, dataset_enlarge_ratio=8)  # a batch for each of 4 GPUs
    opt['dist_params'] = {'backend': 'nccl'}
    with pytest.raises(OptionError, match=r'dist_params: backend: nccl needs GPUs, and this run uses none'):
        parse(write_options(opt, tmp_path / 'o.yml'), '--launcher', 'pytorch')
    assert gpu_machine['init_process_group'] == []


def test_a_timeout_with_the_slurm_launcher_is_refused(gpu_machine, monkeypatch):
    monkeypatch.setattr(compat, '_launch_options', {'option_file': 'o.yml', 'num_gpu': 'auto'})
    with pytest.raises(OptionError, match=r"(?s)o.yml: 1 problem.*dist_params: timeout is not passed on by BasicSR's "
                                          r'SLURM launcher'):
        compat.init_dist('slurm', backend='nccl', port=29500, timeout=60)  # as BasicSR passes dist_params to it
    assert gpu_machine['init_process_group'] == []


def test_several_gpus_without_a_launcher_are_refused_unless_data_parallel_is_asked_for(
        gpu_machine, image_folder, tmp_path, basicsr_log, monkeypatch):
    opt = tiny_options(image_folder, dataset_enlarge_ratio=8)  # a batch for each of 4 GPUs
    opt['num_gpu'] = 'auto'
    with pytest.raises(OptionError, match=r'num_gpu: 4 GPUs in one process would train with DataParallel.*'
                                          r'torchrun --nproc_per_node=4'):
        parse(write_options(opt, tmp_path / 'o.yml'))
    assert not (tmp_path / 'experiments').exists()  # refused before BasicSR makes the experiment folder
    assert parse(write_options(opt, tmp_path / 'o.yml'), is_train=False)['num_gpu'] == 4  # testing: no objective
    opt['data_parallel'] = True
    parsed = parse(write_options(opt, tmp_path / 'o.yml'))
    model = types.SimpleNamespace(opt=parsed, device=torch.device('cpu'))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # DataParallel then wraps without moving anything
    assert isinstance(compat.model_to_device(model, torch.nn.Conv2d(3, 3, 3)), torch.nn.DataParallel)
    assert any('training with DataParallel on 4 GPUs: the batch is 4 x batch_size_per_gpu' in m for m in basicsr_log)


def test_deterministic_turns_the_cudnn_benchmark_and_tf32_off(monkeypatch):
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        compat.apply_determinism({'deterministic': True, 'num_gpu': 0})
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not (torch.backends.cudnn.benchmark or torch.backends.cudnn.allow_tf32
                    or torch.backends.cuda.matmul.allow_tf32)
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        compat.apply_determinism({'num_gpu': 0})  # BasicSR's settings: benchmark on, TF32 convolutions
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved[:4]
        torch.use_deterministic_algorithms(saved[4])


def test_the_pipelines_and_basicsr_scripts_build_their_model_after_the_determinism_settings():
    import basicsr.test
    import basicsr.train
    assert basicsr.train.build_model is compat.build_model and basicsr.test.build_model is compat.build_model
    script = {'__name__': '__main__', 'build_model': print, 'load_resume_state': print}  # train.py run as a script
    compat.adopt_script(script)
    assert script['build_model'] is compat.build_model and script['load_resume_state'] is compat.load_resume_state


def _resume(rank, world_size, tmp_path, blind_ranks):
    """One rank of a 2-process run with --auto_resume, each rank looking at its own experiments folder (the node-local
    disks of two nodes): only rank 0's holds a training state."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "init"}', rank=rank, world_size=world_size)
    try:
        if rank in blind_ranks:  # this node does not share rank 0's filesystem
            compat.osp.isfile = lambda path: False
        root = tmp_path / f'node{rank}' / 'experiments' / 'run'
        opt = {'auto_resume': True, 'rank': rank, 'world_size': world_size, 'dist': True, 'num_gpu': 0,
               'network_g': {'type': 'USAID'}, 'datasets': {'train': {'batch_size_per_gpu': 2}},
               'path': {'experiments_root': str(root), 'training_states': str(root / 'training_states'),
                        'models': str(root / 'models'), 'resume_state': None}}
        try:
            state = compat.load_resume_state(opt)
            outcome = (state and state['iter'], opt['path'].get('pretrain_network_g'))
        except CheckpointError as error:
            outcome = f'error: {error}'
        (tmp_path / f'result.{rank}').write_text(repr(outcome))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('blind_ranks', [(), (1,)], ids=['shared-filesystem', 'rank-1-cannot-see-it'])
def test_every_rank_resumes_from_rank_0s_state_or_every_rank_stops(blind_ranks, tmp_path):
    state = tmp_path / 'node0' / 'experiments' / 'run' / 'training_states' / '6.state'
    state.parent.mkdir(parents=True)
    torch.save({'iter': 6, 'epoch': 1, 'optimizers': [], 'schedulers': []}, state)
    mp.start_processes(_resume, args=(2, tmp_path, blind_ranks), nprocs=2, start_method='fork')
    outcomes = [(tmp_path / f'result.{rank}').read_text() for rank in range(2)]
    if not blind_ranks:  # rank 1 found nothing on its disk, and resumes with rank 0 instead of starting from 0
        assert outcomes == [repr((6, str(tmp_path / f'node{rank}/experiments/run/models/net_g_6.pth')))
                            for rank in range(2)]
    else:
        assert all(o.startswith(f"'error: {state}: rank 0 resumes from this training state, which rank 1 on ")
                   and 'a filesystem every node shares' in o for o in outcomes), outcomes


def test_a_missing_safetensors_checkpoint_is_named_as_such_on_resume(tmp_path):
    root = tmp_path / 'experiments' / 'run'
    (root / 'training_states').mkdir(parents=True)
    torch.save({'iter': 4, 'epoch': 0, 'optimizers': [], 'schedulers': []}, root / 'training_states' / '4.state')
    opt = {'auto_resume': True, 'rank': 0, 'world_size': 1, 'dist': False, 'num_gpu': 0, 'network_g': {},
           'logger': {'save_format': 'safetensors'}, 'datasets': {'train': {'batch_size_per_gpu': 2}},
           'path': {'experiments_root': str(root), 'training_states': str(root / 'training_states'),
                    'models': str(root / 'models'), 'resume_state': None}}
    compat.load_resume_state(opt)  # net_g_4.safetensors was deleted: the load names it, not a .pth never written
    assert opt['path']['pretrain_network_g'] == str(root / 'models' / 'net_g_4.safetensors')


class Images(torch.utils.data.Dataset):
    def __init__(self, count, resume=None):
        self.count, self.opt = count, {'resume': resume}

    def __len__(self):
        return self.count


def test_a_state_of_another_layout_resumes_at_the_same_fraction_of_the_epoch_with_a_warning(basicsr_log):
    # written by 2 processes taking 2 samples each: 16 images, 4 iterations an epoch; stopped at iteration 6, half-way
    # through epoch 1. Resumed by 1 process taking 2: 8 iterations an epoch, so 4 batches (8 samples) are skipped.
    resume = {'iter': 6, 'batch_size': 2, 'saved_replicas': 2, 'saved_batch_size': 2, 'state': 'x/6.state'}
    sampler = ResumableSampler(Images(16, resume), num_replicas=1, rank=0)
    assert any('x/6.state was written by 2 process(es) taking 2 samples each per iteration; this run has 1 taking 2. '
               'The resume is not exact' in message for message in basicsr_log)
    reference = EnlargedSampler(Images(16), num_replicas=1, rank=0)
    for sampler_ in (sampler, reference):
        sampler_.set_epoch(1)
    assert list(sampler) == list(reference)[8:]
    sampler.set_epoch(2)  # the epochs after the interrupted one are whole
    reference.set_epoch(2)
    assert list(sampler) == list(reference)


def test_a_state_of_the_same_layout_skips_exactly_the_batches_done(basicsr_log):
    resume = {'iter': 6, 'batch_size': 2, 'saved_replicas': 2, 'saved_batch_size': 2, 'state': 'x/6.state'}
    sampler = ResumableSampler(Images(16, resume), num_replicas=2, rank=1)
    reference = EnlargedSampler(Images(16), num_replicas=2, rank=1)
    sampler.set_epoch(1)
    reference.set_epoch(1)
    assert list(sampler) == list(reference)[4:] and basicsr_log == []  # 2 of 4 batches of 2 done, no warning


def test_resuming_two_processes_with_one_continues_from_the_state_and_says_it_is_not_exact(image_folder, tmp_path):
    def options(total_iter):
        opt = tiny_options(image_folder, name='relayout', total_iter=total_iter, dataset_enlarge_ratio=4, usa=False)
        opt['val']['val_freq'] = 100
        return str(write_options(opt, tmp_path / f'relayout_{total_iter}.yml'))

    torchrun = [console_script('torchrun'), '--standalone', '--nproc_per_node=2', '-m', 'usaid.train']
    run(torchrun + ['-opt', options(6), '--launcher', 'pytorch'], cwd=tmp_path)
    state = torch.load(tmp_path / 'experiments/relayout/training_states/6.state', weights_only=False)
    assert (state['world_size'], state['batch_size']) == (2, 2)
    run([sys.executable, '-m', 'usaid.train', '-opt', options(8), '--auto_resume'], cwd=tmp_path)
    log = ''.join(p.read_text() for p in (tmp_path / 'experiments/relayout').glob('train_relayout_*.log'))
    assert 'Resuming training from epoch: 1, iter: 6.' in log and 'this run has 1 taking 2. The resume is not' in log
    state = torch.load(tmp_path / 'experiments/relayout/training_states/8.state', weights_only=False)
    assert (state['iter'], state['world_size'], state['batch_size']) == (8, 1, 2)


def test_torchrun_validation_is_shared_between_processes_and_gives_the_metrics_of_one(image_folder, tmp_path,
                                                                                      tiny_run):
    train_opt = tiny_options(image_folder)  # the checkpoint: the shared tiny training run's (conftest)
    for i in range(3):  # 5 images: rank 0 takes 0, 2, 4 and rank 1 takes 1, 3
        shutil.copy(image_folder / 'val' / 'img0.png', image_folder / 'val' / f'extra{i}.png')

    def test_options(name):
        return str(write_options({
            'name': name, 'model_type': 'USAIDModel', 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'test_1': {**train_opt['datasets']['val'], 'name': 'tiny'}},
            'network_g': train_opt['network_g'],
            'path': {'pretrain_network_g': str(tiny_run[0] / 'experiments/e2e/models/net_g_latest.pth')},
            'val': {'save_img': True, 'metrics': train_opt['val']['metrics']}}, tmp_path / f'{name}.yml'))

    run([sys.executable, '-m', 'usaid.test', '-opt', test_options('one')], cwd=tmp_path)
    run([console_script('torchrun'), '--standalone', '--nproc_per_node=2', '-m', 'usaid.test', '-opt',
         test_options('two'), '--launcher', 'pytorch'], cwd=tmp_path)
    tables = []
    for name in ('one', 'two'):
        with open(tmp_path / 'results' / name / 'tiny.csv') as f:
            tables.append(list(csv.DictReader(f)))
        saved = sorted(p.name.split('_')[0] for p in (tmp_path / 'results' / name / 'visualization/tiny').iterdir())
        assert saved == ['extra0', 'extra1', 'extra2', 'img0', 'img1']
    assert tables[0] == tables[1] and len(tables[0]) == 5
    mean = sum(float(row['psnr']) for row in tables[1]) / 5
    assert f'# psnr: {mean:.4f}' in next((tmp_path / 'results/two').glob('test_two_*.log')).read_text()
