import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils import set_random_seed
from PIL import Image

from tests.conftest import console_script, file_size_limit, run, smooth_image, tiny_options
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
    lmdb_out = str(tmp_path / 'val.lmdb')
    result = subprocess.run([console_script('usaid-make-lmdb'), str(image_folder / 'train'), lmdb_out],
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


def tree(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def read_back(lmdb_path):
    """The validation samples GaussianNoiseDataset reads from an LMDB (sigma 0: the clean images)."""
    dataset = build_dataset({'name': 'back', 'type': 'GaussianNoiseDataset', 'phase': 'val', 'sigma': 0,
                             'dataroot_gt': str(lmdb_path), 'io_backend': {'type': 'lmdb'}})
    return {sample['gt_path']: sample['gt'] for sample in dataset}


@pytest.mark.parametrize('layout', ['same', 'inside', 'containing'])
def test_an_out_that_is_inside_or_around_the_source_is_refused_even_with_overwrite(image_folder, tmp_path, layout):
    source = tmp_path / 'set.lmdb' / 'images' if layout == 'containing' else tmp_path / 'set.lmdb'
    source.mkdir(parents=True)
    for name in ('a.png', 'b.png'):
        (source / name).write_bytes((image_folder / 'val' / 'img0.png').read_bytes())
    (source / 'notes.txt').write_text('my notes')
    out = {'same': source, 'inside': source / 'sub.lmdb', 'containing': tmp_path / 'set.lmdb'}[layout]
    before = tree(tmp_path)
    result = subprocess.run([console_script('usaid-make-lmdb'), str(source), str(out), '--overwrite'],
                            capture_output=True, text=True)
    where = {'same': 'the same path as', 'inside': 'inside', 'containing': 'a folder containing'}[layout]
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith(f'usaid-make-lmdb: OUT {out} is {where} SOURCE {source}: '), result.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize('kind', ['extra file', 'not an lmdb', 'a file', 'a link'])
def test_overwrite_replaces_only_an_lmdb_this_tool_wrote(image_folder, tmp_path, kind):
    out = tmp_path / 'val.lmdb'
    if kind == 'extra file':
        make_lmdb(str(image_folder / 'val'), str(out))
        (out / 'my_notes.txt').write_text('keep me')
        expected = "it also holds 'my_notes.txt'"
    elif kind == 'not an lmdb':
        out.mkdir()
        (out / 'meta_info.txt').write_text('img0.png (32,32,3) 1\n')
        expected = 'it has no data.mdb'
    elif kind == 'a file':
        out.write_text('a file named like an LMDB')
        expected = 'is a file, not an LMDB folder'
    else:
        (tmp_path / 'elsewhere').mkdir()
        out.symlink_to(tmp_path / 'elsewhere')
        expected = 'is a symbolic link to'
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match=expected) as error:
        make_lmdb(str(image_folder / 'train'), str(out), overwrite=True)
    assert '--overwrite replaces only' in str(error.value) and tree(tmp_path) == before
    assert not list(tmp_path.glob('.*'))  # no partial LMDB, no lock file left


def test_a_second_build_of_the_same_output_refuses_while_the_first_runs(image_folder, tmp_path):
    out = tmp_path / 'train.lmdb'
    make_lmdb(str(image_folder / 'val'), str(out))
    kept = tree(out)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys; from usaid.paths import output_lock\n'
                               f'with output_lock({str(out)!r}, "usaid-make-lmdb"):\n'
                               '    print("held", flush=True); sys.stdin.read()'],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        result = subprocess.run([console_script('usaid-make-lmdb'), str(image_folder / 'train'), str(out),
                                 '--overwrite'], capture_output=True, text=True)
        assert result.returncode == 1 and 'Traceback' not in result.stderr
        message = result.stderr.strip()
        assert message.startswith(f'usaid-make-lmdb: {out}: another usaid-make-lmdb (pid {holder.pid} on ')
        assert message.endswith(') is writing it now; wait until it ends, or stop it, or choose another output.')
        assert tree(out) == kept
    finally:
        holder.kill()  # killed, not ended: the kernel releases its lock, nothing stale is left
        holder.wait()
    make_lmdb(str(image_folder / 'train'), str(out), overwrite=True)
    assert len(read_back(out)) == 4 and not list(tmp_path.glob('.*'))


def test_two_builds_started_together_leave_one_complete_lmdb(image_folder, tmp_path):
    out = tmp_path / 'train.lmdb'
    command = [console_script('usaid-make-lmdb'), str(image_folder / 'train'), str(out), '--overwrite']
    builds = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(b.wait(), b.stderr.read()) for b in builds]
    assert any(code == 0 for code, _ in results), results
    assert all(code == 0 or 'is writing it now' in err for code, err in results), results
    assert len(read_back(out)) == 4 and sorted(p.name for p in out.iterdir()) == ['data.mdb', 'lock.mdb',
                                                                                  'meta_info.txt']


def test_names_with_white_space_or_not_ascii_are_refused_with_their_names(image_folder, tmp_path):
    png = (image_folder / 'val' / 'img0.png').read_bytes()
    source = tmp_path / 'src'
    source.mkdir()
    for name in ('my photo.png', 'tab\tname.png', 'fine.png'):
        (source / name).write_bytes(png)
    with pytest.raises(ValueError, match=r"2 image name\(s\) hold white space: .*my photo.png', .*tab\\tname.png'") \
            as error:
        make_lmdb(str(source), str(tmp_path / 'out.lmdb'))
    assert 'rename them (e.g. spaces to _); nothing was written' in str(error.value)
    for name in ('my photo.png', 'tab\tname.png'):
        (source / name).unlink()
    (source / 'café.png').write_bytes(png)
    with pytest.raises(ValueError, match=r"1 image name\(s\) are not ASCII: .*café.png'; BasicSR encodes LMDB keys"):
        make_lmdb(str(source), str(tmp_path / 'out.lmdb'))
    assert not (tmp_path / 'out.lmdb').exists() and not list(tmp_path.glob('.*'))


def test_non_ascii_folders_work_end_to_end(image_folder, tmp_path):
    source = tmp_path / 'données'
    source.mkdir()
    (source / 'img0.png').write_bytes((image_folder / 'val' / 'img0.png').read_bytes())
    out = tmp_path / 'résultats' / 'données.lmdb'
    make_lmdb(str(source), str(out))
    gt = read_back(out)['img0']
    expected = cv2.imread(str(source / 'img0.png'))[..., ::-1] / 255.
    assert torch.allclose(gt, torch.from_numpy(expected.copy()).permute(2, 0, 1).float(), atol=1e-7)


def test_exif_orientation_is_applied_as_the_folder_reader_applies_it(tmp_path):
    source = tmp_path / 'photos'
    source.mkdir()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 8  # turn 90 degrees counter-clockwise to view
    image.save(source / 'portrait.jpg', exif=exif.tobytes(), quality=95)
    make_lmdb(str(source), str(tmp_path / 'photos.lmdb'))
    assert (tmp_path / 'photos.lmdb' / 'meta_info.txt').read_text() == 'portrait.png (40,24,3) 1\n'
    from_folder = build_dataset({'name': 'folder', 'type': 'GaussianNoiseDataset', 'phase': 'val', 'sigma': 0,
                                 'dataroot_gt': str(source), 'io_backend': {'type': 'disk'}})[0]['gt']
    assert from_folder.shape == (3, 40, 24) and torch.equal(read_back(tmp_path / 'photos.lmdb')['portrait'],
                                                            from_folder)


def test_a_compression_level_out_of_range_is_refused(image_folder, tmp_path):
    result = subprocess.run([console_script('usaid-make-lmdb'), str(image_folder / 'val'), str(tmp_path / 'v.lmdb'),
                             '--compress-level', '12'], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == (
        'usaid-make-lmdb: --compress-level 12: expected a PNG compression level from 0 to 9.')


def test_an_out_that_cannot_be_made_is_named_before_any_image_is_read(image_folder, tmp_path):
    (tmp_path / 'notes.txt').write_text('a file, not a folder')
    out = tmp_path / 'notes.txt' / 'set.lmdb'
    result = subprocess.run([console_script('usaid-make-lmdb'), str(image_folder / 'val'), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == (
        f'usaid-make-lmdb: OUT {out}: cannot be made, because {tmp_path / "notes.txt"} is a file, not a folder; '
        'expected a path under a folder.')


def test_images_that_would_share_a_key_are_refused_before_anything_is_written(tmp_path):
    source = tmp_path / 'source'
    source.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(source / 'a.png'), smooth_image(rng, 20, 24))
    cv2.imwrite(str(source / 'a.jpg'), smooth_image(rng, 20, 24))  # BasicSR's key: 'a' for both
    with pytest.raises(ValueError, match=r"1 LMDB key\(s\) would hold more than one image"):
        make_lmdb(str(source), str(tmp_path / 'out.lmdb'))
    assert not (tmp_path / 'out.lmdb').exists()


def test_a_folder_named_like_the_tools_work_folder_is_never_deleted(image_folder, tmp_path):
    theirs = tmp_path / '.out.lmdb.partial.lmdb'
    theirs.mkdir()
    (theirs / 'mine.txt').write_text('precious')
    make_lmdb(str(image_folder / 'train'), str(tmp_path / 'out.lmdb'))
    assert (theirs / 'mine.txt').read_text() == 'precious'
    assert (tmp_path / 'out.lmdb' / 'data.mdb').exists()


@pytest.mark.parametrize('template', ['{}{}.png', '{0.__class__}.png', 'x.png'])
def test_file_name_templates_other_than_one_placeholder_are_refused(image_folder, tmp_path, template):
    listing = tmp_path / 'list.txt'
    listing.write_text('img0\n')
    with pytest.raises(ValueError, match='expected a file name with one {} for the listed name'):
        make_lmdb(str(image_folder / 'train'), str(tmp_path / 'out.lmdb'), str(listing), template)


def test_overwrite_refuses_a_folder_that_only_looks_like_an_lmdb(image_folder, tmp_path):
    fake = tmp_path / 'out.lmdb'
    fake.mkdir()
    (fake / 'data.mdb').write_text('x')
    (fake / 'meta_info.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='its data.mdb is not an LMDB'):
        make_lmdb(str(image_folder / 'train'), str(fake), overwrite=True)
    assert (fake / 'meta_info.txt').read_text() == 'precious'
