"""BasicSR's own scripts get what usaid-train and usaid-test give: the option check before anything is written, one
message and exit status 1 for a bad option file, and CPU resume (tests/test_train.py runs the resume tests through
every entry point)."""
import subprocess
import sys

import pytest

from tests.conftest import TRAIN_ENTRY_POINTS, tiny_options, write_options

TEST_ENTRY_POINTS = {
    'usaid-test': ([sys.executable, '-m', 'usaid.test'], False),
    'basicsr/test.py': ([sys.executable, 'basicsr/test.py'], True),
    'usaid.test in a checkout root': ([sys.executable, '-m', 'usaid.test'], True),
}


def bad_options(image_folder, is_train):
    opt = tiny_options(image_folder, name='bad')
    opt['network_g']['type'] = 'USAIDD'
    opt['datasets']['train']['gt_size'] = 'big'
    if not is_train:
        opt['datasets'] = {'test_1': opt['datasets']['val']}
        opt['val'] = {'save_img': False, 'metrics': {'niqe': {'type': 'calculate_niqe', 'crop_border': 0}}}
    return opt


@pytest.mark.parametrize('entry_point', [*TRAIN_ENTRY_POINTS, *TEST_ENTRY_POINTS])
def test_a_bad_option_file_stops_every_entry_point_with_one_message_before_anything_is_written(
        entry_point, image_folder, tmp_path, basicsr_checkout):
    is_train = entry_point in TRAIN_ENTRY_POINTS
    command, in_checkout = (TRAIN_ENTRY_POINTS if is_train else TEST_ENTRY_POINTS)[entry_point]
    cwd = basicsr_checkout if in_checkout else tmp_path
    opt_file = write_options(bad_options(image_folder, is_train), tmp_path / 'bad.yml')
    before = sorted(p.name for p in cwd.iterdir())
    result = subprocess.run(command + ['-opt', str(opt_file)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    assert "network_g:type: 'USAIDD' is not a registered architecture" in result.stderr
    if is_train:
        assert "datasets:train:gt_size: found 'big' (a string); expected an integer" in result.stderr
    else:  # the validation images (32x32) are too small for NIQE: caught before the test, not inside it
        assert 'val:metrics:niqe: calculate_niqe needs at least two 96x96 blocks' in result.stderr
    assert sorted(p.name for p in cwd.iterdir()) == before  # no experiments/, results/ or tb_logger/


def test_other_errors_keep_their_traceback(tmp_path):
    crash = 'import usaid; raise RuntimeError("a bug, not a bad input")'
    result = subprocess.run([sys.executable, '-c', crash], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and 'Traceback' in result.stderr and 'a bug, not a bad input' in result.stderr
