"""Shared fixtures: tiny real images on disk and small option files for the pipelines."""
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from usaid.released import RELEASED

REPO = Path(__file__).resolve().parents[1]
# USAID_SHARED: for a copy of the tests elsewhere (make mutation runs them in mutants/)
SHARED = Path(os.environ.get('USAID_SHARED', REPO.parent / 'shared'))
CHECKPOINTS = SHARED / 'seed' / 'checkpoints'
KODAK24 = SHARED / 'testsets' / 'Kodak24'

torch.set_num_threads(min(2, os.cpu_count() or 1))


def smooth_image(rng, height, width, channels=3):
    """A photo-like 8-bit image: smooth colour gradients plus texture."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    planes = [np.sin(6 * x * (c + 1) + rng.uniform(0, 6)) * np.cos(5 * y + c) for c in range(channels)]
    img = 0.5 + 0.35 * np.stack(planes, axis=-1) + 0.05 * rng.standard_normal((height, width, channels))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_image_folder(root):
    """Four 56x64 training images and two 32x32 validation images under ``root``."""
    rng = np.random.default_rng(0)
    for subset, count, size in (('train', 4, (56, 64)), ('val', 2, (32, 32))):
        (root / subset).mkdir()
        for i in range(count):
            cv2.imwrite(str(root / subset / f'img{i}.png'), smooth_image(rng, *size))
    return root


@pytest.fixture
def image_folder(tmp_path):
    """Four 56x64 training images and two 32x32 validation images."""
    return write_image_folder(tmp_path)


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """``(folder, options)`` of one finished ``usaid-train`` run of :func:`tiny_options` (name ``e2e``, 4 iterations,
    validated on four 64x64 images: the USA network segments single images of at least 64x64 with batch statistics),
    run in ``folder``. Shared by the tests that read a finished run (one run instead of one each); they must not
    write into it."""
    root = write_image_folder(tmp_path_factory.mktemp('tiny_run'))
    (root / 'val64').mkdir()
    for i in range(4):
        cv2.imwrite(str(root / 'val64' / f'img{i}.png'), smooth_image(np.random.default_rng(i), 64, 64))
    opt = tiny_options(root, name='e2e')
    opt['datasets']['val']['dataroot_gt'] = str(root / 'val64')
    run([console_script('usaid-train'), '-opt', str(write_options(opt, root / 'e2e.yml'))], cwd=root)
    return root, opt


def tiny_options(root, name='tiny', total_iter=4, usa=True, **train_overrides):
    """Options of a short CPU run on the images of ``image_folder``: small denoiser, ResNet-18 USA network."""
    train_set = {
        'name': 'tiny_train', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(root / 'train'),
        'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True, 'use_rot': True,
        'sigma_type': 'uniform', 'sigma': [5, 50], 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
        'dataset_enlarge_ratio': 1,
    }
    train_set.update(train_overrides)
    train = {
        'ema_decay': 0.9,
        'optim_g': {'type': 'Adam', 'lr': 1e-3},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
        'total_iter': total_iter, 'warmup_iter': -1,
        'pixel_opt': {'type': 'BatchSSELoss', 'loss_weight': 0.5},
    }
    if usa:
        train['usa_opt'] = {'type': 'USALoss', 'loss_weight': 0.5, 'network': {
            'type': 'USANet', 'backbone': 'resnet18', 'pretrained': 'none'}}
    return {
        'name': name, 'model_type': 'USAIDModel', 'num_gpu': 0, 'manual_seed': 10,
        'datasets': {
            'train': train_set,
            'val': {'name': 'tiny_val', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(root / 'val'),
                    'io_backend': {'type': 'disk'}, 'sigma_type': 'fixed', 'sigma': 25},
        },
        'network_g': {'type': 'USAID', 'num_feat': 16, 'num_layers': 5},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': train,
        'val': {'val_freq': 2, 'save_img': False, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def option_problems(opt, is_train=True):
    """The problems ``usaid.options.check_options`` reports for ``opt`` (an empty list if none)."""
    from usaid.errors import OptionError
    from usaid.options import check_options
    try:
        check_options(opt, 'opts.yml', is_train)
    except OptionError as error:
        return error.problems
    return []


def write_options(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def run(args, cwd, env=None, timeout=600):
    """Run a command, failing the test with its output if it fails."""
    result = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f'{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
    return result


def console_script(name):
    return str(Path(sys.executable).parent / name)


def cli(tool, *args, cwd):
    """Run the console script ``tool``; its result, whatever its exit status."""
    return subprocess.run([console_script(tool), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def assert_one_message(result, tool, *parts):
    """``result`` is a refusal as the tools print it: exit status 1, ``<tool>: message`` holding ``parts``, no
    traceback."""
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.startswith(f'{tool}: '), result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


@contextmanager
def file_size_limit(max_bytes):
    """A disk that fills up: in this process, writing a file past ``max_bytes`` fails with EFBIG, as a full disk fails
    with ENOSPC (RLIMIT_FSIZE, with SIGXFSZ ignored as CPython does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def basicsr_checkout(tmp_path):
    """A BasicSR 1.4.2 checkout as cloned, not `setup.py develop`-ed: BasicSR's own files (copied from the installed
    package, unedited), a VERSION file and no basicsr/version.py (setup.py generates it)."""
    import shutil

    import basicsr

    checkout = tmp_path / 'BasicSR'
    shutil.copytree(Path(basicsr.__file__).parent, checkout / 'basicsr',
                    ignore=shutil.ignore_patterns('__pycache__', 'version.py'))
    (checkout / 'VERSION').write_text('1.4.2\n')
    return checkout


# Every way to start BasicSR's training pipeline with U-SAID registered: (command, run from the checkout?). BasicSR's
# own script roots its outputs at the checkout; `-m usaid.train` in a checkout root imports the checkout's basicsr.
TRAIN_ENTRY_POINTS = {
    'usaid-train': ([sys.executable, '-m', 'usaid.train'], False),
    'basicsr/train.py': ([sys.executable, 'basicsr/train.py'], True),
    'usaid.train in a checkout root': ([sys.executable, '-m', 'usaid.train'], True),
}


@pytest.fixture
def recipe_images(image_folder):
    """``image_folder`` with validation images large enough for every metric of the shipped recipes (NIQE scores
    images of at least two 96x96 blocks)."""
    rng = np.random.default_rng(1)
    for i in range(2):
        cv2.imwrite(str(image_folder / 'val' / f'img{i}.png'), smooth_image(rng, 96, 192))
    return image_folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache of this test's own ($TORCH_HOME, also for the tools run as processes)."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)  # an earlier set_dir would win over $TORCH_HOME
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


@pytest.fixture
def seeded(hub):
    """The hub cache holding the three released files, as a first download leaves it."""
    hub.mkdir(parents=True)
    for model in RELEASED.values():
        shutil.copy(CHECKPOINTS / model.filename, hub / model.filename)
    return hub


NO_CUDA = 'no CUDA device (torch.cuda.is_available() is False)'


def cuda_skip_reason(needed):
    """Why a test that needs ``needed`` GPUs cannot run here, or None if it can."""
    if not torch.cuda.is_available():
        return NO_CUDA
    if torch.cuda.device_count() < needed:
        return f'needs {needed} GPUs (torch.cuda.device_count() is {torch.cuda.device_count()})'
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (``@pytest.mark.cuda``, ``cuda(gpus=2)``: setup.cfg) skip, saying why, where torch sees
    no GPU or too few; ``make gpu-check`` runs them and counts the skips. torch.cuda is asked only if some test needs
    it."""
    for item in items:
        marker = item.get_closest_marker('cuda')
        reason = marker and cuda_skip_reason(marker.kwargs.get('gpus', 1))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
