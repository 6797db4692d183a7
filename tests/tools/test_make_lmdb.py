import subprocess

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils import set_random_seed

from tests.conftest import console_script, file_size_limit, run, tiny_options
from usaid.data.resumable_sampler import ResumableSampler
from usaid.tools.make_lmdb import make_lmdb


def test_folder_to_lmdb_with_meta_info(image_folder, tmp_path):
    result = run([console_script('usaid-make-lmdb'), str(image_folder / 'train'), str(tmp_path / 'train.lmdb')],
                 cwd=tmp_path)
    assert 'Wrote 4 images' in result.stdout
    assert (tmp_path / 'train.lmdb' / 'data.mdb').exists()
    assert (tmp_path / 'train.lmdb' / 'meta_info.txt').read_text().splitlines() == [
        f'img{i}.png (56,64,3) 1' for i in range(4)]
    assert not list(tmp_path.glob('.*partial*'))


def test_list_file_in_voc_layout(tmp_path):
    (tmp_path / 'JPEGImages').mkdir()
    rng = np.random.default_rng(0)
    for name in ('2007_000032', '2007_000039', '2007_000063'):
        cv2.imwrite(str(tmp_path / 'JPEGImages' / f'{name}.jpg'), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    (tmp_path / 'train.txt').write_text('2007_000032\n2007_000063\n')
    count, _ = make_lmdb(str(tmp_path / 'JPEGImages'), str(tmp_path / 'voc.lmdb'), str(tmp_path / 'train.txt'),
                         '{}.jpg')
    assert count == 2
    keys = [line.split('.')[0] for line in (tmp_path / 'voc.lmdb' / 'meta_info.txt').read_text().splitlines()]
    assert keys == ['2007_000032', '2007_000063']


def test_sixteen_bit_images_stay_sixteen_bit(tmp_path):
    (tmp_path / 'src').mkdir()
    img16 = np.random.default_rng(0).integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / 'src' / 'deep.png'), img16)
    make_lmdb(str(tmp_path / 'src'), str(tmp_path / 'deep.lmdb'))
    sample = build_dataset({'name': 'deep', 'type': 'GaussianNoiseDataset', 'phase': 'val', 'sigma': 0,
                            'dataroot_gt': str(tmp_path / 'deep.lmdb'), 'io_backend': {'type': 'lmdb'}})[0]
    expected = torch.from_numpy(img16[..., ::-1] / 65535.).permute(2, 0, 1).float()
    assert torch.allclose(sample['gt'], expected, atol=1e-7)


def test_existing_lmdb_is_kept_unless_overwrite(image_folder, tmp_path):
    make_lmdb(str(image_folder / 'val'), str(tmp_path / 'val.lmdb'))
    before = (tmp_path / 'val.lmdb' / 'data.mdb').read_bytes()
    result = subprocess.run([console_script('usaid-make-lmdb'), str(image_folder / 'train'), str(tmp_path / 'val.lmdb')],
                            capture_output=True, text=True)
    assert result.returncode == 1 and 'exists; pass --overwrite' in result.stderr and 'Traceback' not in result.stderr
    assert (tmp_path / 'val.lmdb' / 'data.mdb').read_bytes() == before
    make_lmdb(str(image_folder / 'train'), str(tmp_path / 'val.lmdb'), overwrite=True)
    assert len((tmp_path / 'val.lmdb' / 'meta_info.txt').read_text().splitlines()) == 4


def test_a_failed_run_leaves_no_lmdb(image_folder, tmp_path):
    source = tmp_path / 'src'
    source.mkdir()
    for name in ('a.png', 'b.png'):
        (source / name).write_bytes((image_folder / 'val' / 'img0.png').read_bytes())
    (source / 'c.png').write_bytes((image_folder / 'val' / 'img0.png').read_bytes()[:60])  # truncated
    with pytest.raises(ValueError, match='c.png: cannot be read'):
        make_lmdb(str(source), str(tmp_path / 'broken.lmdb'))
    assert not list(tmp_path.glob('*.lmdb')) and not list(tmp_path.glob('.*'))


def test_training_batches_are_the_same_from_the_folder_and_its_lmdb(image_folder, tmp_path):
    make_lmdb(str(image_folder / 'train'), str(tmp_path / 'train.lmdb'))
    folder_opt = {**tiny_options(image_folder)['datasets']['train'], 'phase': 'train', 'num_worker_per_gpu': 2}
    lmdb_opt = {**folder_opt, 'dataroot_gt': str(tmp_path / 'train.lmdb'), 'io_backend': {'type': 'lmdb'}}

    def batches(dataset_opt):
        set_random_seed(7)
        dataset = build_dataset(dataset_opt)
        loader = build_dataloader(dataset, dataset_opt, num_gpu=0, dist=False,
                                  sampler=ResumableSampler(dataset, 1, 0, 3), seed=7)
        return [b for _ in range(2) for b in loader]

    from_folder, from_lmdb = batches(folder_opt), batches(lmdb_opt)
    assert len(from_folder) == len(from_lmdb) == 12
    for a, b in zip(from_folder, from_lmdb):
        assert torch.equal(a['gt'], b['gt']) and torch.equal(a['lq'], b['lq'])
        assert torch.equal(a['sigma'], b['sigma'])


def test_a_failing_write_leaves_no_lmdb_and_keeps_an_existing_one(image_folder, tmp_path):
    out = tmp_path / 'set.lmdb'
    with file_size_limit(16 * 1024), pytest.raises(OSError, match=f'{out}: the LMDB could not be written .*; '
                                                                  'no set.lmdb was made'):
        make_lmdb(str(image_folder / 'train'), str(out))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.lmdb')]  # neither the LMDB nor a partial one

    make_lmdb(str(image_folder / 'val'), str(out))
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    with file_size_limit(16 * 1024), pytest.raises(OSError, match=f'the existing {out} is kept'):
        make_lmdb(str(image_folder / 'train'), str(out), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept
    assert len(build_dataset({'name': 'kept', 'type': 'GaussianNoiseDataset', 'dataroot_gt': str(out), 'phase': 'val',
                              'io_backend': {'type': 'lmdb'}, 'sigma': 25})) == 2
