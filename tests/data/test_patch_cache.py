"""The training cache of decoded images: the same samples as decoding each patch, bounded, never stale."""
import logging
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import smooth_image
from usaid.data import GaussianNoiseDataset, image_cache
from usaid.data.resumable_sampler import ResumableSampler
from usaid.tools.make_lmdb import make_lmdb

SIZES = {'a.png': (56, 64), 'b.jpg': (64, 48), 'c.png': (40, 72), 'd.png': (48, 48)}


@pytest.fixture
def photos(tmp_path):
    """Four training images: PNG and JPEG, one 16-bit, one gray."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    rng = np.random.default_rng(7)
    for name, (h, w) in SIZES.items():
        img = smooth_image(rng, h, w)
        if name == 'c.png':
            img = img.astype(np.uint16) * 256 + rng.integers(0, 256, img.shape, np.uint16)  # all 16 bits used
        if name == 'd.png':
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(folder / name), img)
    return folder


def train_set(root, in_ch=3, **opt):
    random.seed(1)  # the dataset draws its base seed: the same for every dataset of a test
    return GaussianNoiseDataset({
        'name': 'cached', 'type': 'GaussianNoiseDataset', 'phase': 'train', 'dataroot_gt': str(root),
        'io_backend': {'type': 'lmdb' if str(root).endswith('.lmdb') else 'disk'}, 'gt_size': 32, 'in_ch': in_ch,
        'use_hflip': True, 'use_rot': True, 'sigma_type': 'uniform', 'sigma': [5, 50], **opt})


def batches(dataset, workers=0, context=None, epochs=2):
    sampler = ResumableSampler(dataset, 1, 0, ratio=4)  # 16 samples an epoch, each numbered
    loader = DataLoader(dataset, 4, sampler=sampler, num_workers=workers, multiprocessing_context=context)
    result = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        result += list(loader)
    return result


def assert_same(got, expected):
    assert len(got) == len(expected) == 8
    for a, b in zip(got, expected):
        assert a['gt_path'] == b['gt_path'] and torch.equal(a['sigma'], b['sigma'])
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])


def expected_bytes(name, in_ch=3):
    """What OpenCV decodes each photo to, from the sizes written above: 3 channels (1 for in_ch 1), 2 bytes a
    value for the 16-bit one."""
    h, w = SIZES[name]
    return h * w * (1 if in_ch == 1 else 3) * (2 if name == 'c.png' else 1)


@pytest.mark.parametrize('source', ['folder', 'lmdb', 'gray'])
@pytest.mark.parametrize('workers', [0, 2])
def test_cached_samples_are_the_decoded_samples(photos, tmp_path, caplog, source, workers):
    root, in_ch = photos, 1 if source == 'gray' else 3
    if source == 'lmdb':
        root = tmp_path / 'photos.lmdb'
        make_lmdb(str(photos), str(root))
    decoded = batches(train_set(root, in_ch, cache_bytes=0), workers)
    with caplog.at_level(logging.INFO, logger='basicsr'):
        cached = train_set(root, in_ch)
    assert len(cached.cache) == 4
    if source != 'lmdb':  # an LMDB holds PNGs of 8 bits (usaid-make-lmdb): its sizes differ for c.png
        assert cached.cache.size == sum(expected_bytes(name, in_ch) for name in SIZES)
    assert 'cache: 4 of 4 images' in caplog.text
    assert_same(batches(cached, workers), decoded)
    assert not torch.equal(decoded[0]['lq'], decoded[4]['lq'])  # samples differ: the comparison means something


def test_the_cache_serves_workers_without_the_files_forked_or_spawned(photos):
    decoded = batches(train_set(photos, cache_bytes=0), epochs=1)
    cached = train_set(photos)
    for path in photos.iterdir():
        path.unlink()  # from here on only the cache has the images
    assert_same(batches(cached, 2, 'fork', epochs=1) * 2, decoded * 2)
    assert_same(batches(cached, 1, 'spawn', epochs=1) * 2, decoded * 2)


def test_the_byte_limit_caches_the_images_that_fit_and_decodes_the_others(photos, caplog):
    decoded = batches(train_set(photos, cache_bytes=0))
    limit = expected_bytes('a.png') + expected_bytes('b.jpg') + expected_bytes('d.png')  # c.png, 16-bit, not
    with caplog.at_level(logging.INFO, logger='basicsr'):
        cached = train_set(photos, cache_bytes=limit + 100)
    assert sorted(os.path.basename(p) for p in cached.cache.entries) == ['a.png', 'b.jpg', 'd.png']
    assert cached.cache.size == limit and cached.cache.mapped <= limit + 100
    assert 'cache: 3 of 4 images' in caplog.text and '1 image(s) beyond the limit' in caplog.text
    assert_same(batches(cached), decoded)
    with caplog.at_level(logging.INFO, logger='basicsr'):
        off = train_set(photos, cache_bytes=100)  # no image fits
    assert off.cache is None and 'cache off: no image fits the limit of 100 bytes' in caplog.text


def test_the_limit_is_lowered_to_half_the_available_memory_per_local_process(monkeypatch):
    monkeypatch.setattr(image_cache, 'available_memory', lambda: 8 * 2**30)
    assert image_cache.cache_limit(1 * 2**30) == (2**30, 'cache_bytes 1.00 GiB')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    limit, why = image_cache.cache_limit(1 * 2**30)
    assert limit == 2**29 and 'half of the 8.00 GiB of memory available shared by 8 processes' in why


def test_memory_that_cannot_be_reserved_falls_back_to_decoding(photos, caplog, monkeypatch):
    decoded = batches(train_set(photos, cache_bytes=0))

    def no_memory(size):
        raise OSError(12, 'Cannot allocate memory')
    monkeypatch.setattr(image_cache, '_anonymous_memory', no_memory)
    with caplog.at_level(logging.INFO, logger='basicsr'):
        fallback = train_set(photos)
    assert fallback.cache is None and 'cache off: ' in caplog.text and 'cannot be reserved' in caplog.text
    assert_same(batches(fallback), decoded)


def test_a_worker_that_cannot_open_the_cache_decodes_with_a_warning(photos, caplog, monkeypatch):
    decoded = batches(train_set(photos, cache_bytes=0))
    pickled = pickle.dumps(train_set(photos))  # what a spawned worker receives

    def denied(path, flags):  # /proc/<pid>/fd closed to this worker (a hardened kernel, another user)
        raise PermissionError(13, 'Permission denied', path)
    with monkeypatch.context() as patched:
        patched.setattr(os, 'open', denied)
        copy = pickle.loads(pickled)
    assert len(copy.cache) == 0 and 'Permission denied' in copy.cache.unreachable
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        assert_same(batches(copy), decoded)
    assert caplog.text.count('the image cache cannot be opened in process') == 1


def test_a_changed_file_is_not_served_stale(photos):
    first = train_set(photos)[4 + 0]  # sample 1 of a.png
    cv2.imwrite(str(photos / 'a.png'), 255 - cv2.imread(str(photos / 'a.png')))
    again = train_set(photos)  # a new run: a new cache
    assert torch.allclose(again[4]['gt'], 1 - first['gt'], atol=1e-6)
    assert torch.equal(again[4]['gt'], train_set(photos, cache_bytes=0)[4]['gt'])


def test_validation_does_not_cache(photos):
    val = GaussianNoiseDataset({'name': 'v', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(photos),
                                'sigma': 25, 'phase': 'val'})
    assert val.cache is None


@pytest.mark.parametrize('value, message', [(-1, 'found -1; expected a number >= 0'),
                                            ('8G', "found '8G' (a string); expected an integer"),
                                            (8e9, 'found 8000000000.0 (a number); expected an integer')])
def test_bad_cache_bytes_is_named(photos, value, message):
    with pytest.raises(ValueError, match=re.escape(f'datasets: cached: cache_bytes: {message}')):
        train_set(photos, cache_bytes=value)


def test_the_data_benchmark_runs_on_a_few_photos():
    # speed is the benchmark's to report (docs/benchmarks.md); here it only has to keep working
    script = Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_data.py'
    done = subprocess.run([sys.executable, str(script), '--images', '2', '--only', 'lmdb', '--workers', '1'],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith('lmdb ')]
    assert [row[1] for row in rows] == ['before', 'after', 'clean']
    assert [len(row) for row in rows] == [7, 7, 6]  # name, path, 3 figures (2 for clean), the construction time


@pytest.mark.parametrize('arguments, message', [
    (['--images', '0'], "argument --images: '0': expected an integer of at least 1"),
    (['--workers', '-1'], "argument --workers: '-1': expected an integer of at least 1"),
    (['--folder', '/nonexistent'], '--folder /nonexistent: not a folder; expected a folder of images'),
])
def test_the_data_benchmark_refuses_bad_arguments_before_any_work(arguments, message):
    script = Path(__file__).resolve().parents[2] / 'benchmarks' / 'bench_data.py'
    done = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and 'Traceback' not in done.stderr, done.stderr
