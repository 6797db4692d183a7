"""usaid-export as a user runs it: what it prints, and what it refuses without writing anything (the formats
themselves: tests/test_export.py)."""
import sys

import pytest
import torch

from tests.conftest import CHECKPOINTS, assert_one_message, cli, file_size_limit
from usaid.tools import export as export_tool

pytest.importorskip('onnxruntime')  # the onnx extra, installed by make install


def test_the_console_script_prints_what_it_wrote_and_the_measured_difference(seeded, tmp_path):
    result = cli('usaid-export', 'cdncnn-b', 'dncnn.onnx', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'dncnn.onnx').stat().st_size > 2_000_000  # the weights are inside: one file
    assert not list(tmp_path.glob('*.data')) and not list(tmp_path.glob('.*partial'))
    lines = result.stdout.splitlines()
    assert lines[0].startswith('dncnn.onnx: onnx, ') and 'float32' in lines[0] and 'dynamic' in lines[0]
    assert 'DnCNN.pth' in lines[1]
    probes = [line for line in lines if 'difference from the source network' in line]
    assert len(probes) == 2 and all('onnxruntime' in line and 'PSNR' in line for line in probes)


def test_a_missing_extra_is_named_before_anything_is_loaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # what Python does for a package that is not installed
    with pytest.raises(SystemExit) as error:
        export_tool.main([str(tmp_path / 'no-such-model'), str(tmp_path / 'out.onnx')])
    message = str(error.value)
    assert "needs the Python package 'onnxruntime'" in message and 'install the onnx extra' in message
    assert "'onnxruntime>=" in message and 'pip install ".[onnx]"' in message  # setup.py's requirements, read back
    assert not (tmp_path / 'out.onnx').exists()


@pytest.mark.parametrize('args, parts', [
    (['usaid', 'out.png'], ['the extension .png names no format', '--format']),
    (['usaid', 'out.onnx', '--format', 'pt2'], ['the pt2 format writes .pt2 files']),
    (['usaid', 'out.pt2', '--fp16'], ['--fp16: applies to --format onnx only']),
    (['usaid', 'out.pth', '--opset', '17'], ['--opset: applies to --format onnx only']),
    (['usaid', 'out.pt2', '--param-key', 'params_ema'], ['--param-key params_ema', 'has no such entry']),
    (['usaid', '.'], ['names no format']),
])
def test_mistakes_are_refused_with_one_message_and_nothing_written(seeded, tmp_path, args, parts):
    work = tmp_path / 'work'
    work.mkdir()
    assert_one_message(cli('usaid-export', *args, cwd=work), 'usaid-export', *parts)
    assert list(work.iterdir()) == []


def test_existing_files_are_kept_without_force_and_the_source_never_replaced(seeded, tmp_path):
    existing = tmp_path / 'mine.pt2'
    existing.write_bytes(b'precious')
    assert_one_message(cli('usaid-export', 'usaid', existing, cwd=tmp_path), 'usaid-export', 'exists', '--force')
    assert existing.read_bytes() == b'precious'
    source = tmp_path / 'net.pth'
    source.write_bytes((CHECKPOINTS / 'USAID.pth').read_bytes())
    before = source.read_bytes()
    assert_one_message(cli('usaid-export', source, source, '--force', cwd=tmp_path), 'usaid-export',
                       'is the source checkpoint')
    assert source.read_bytes() == before


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial_one(seeded, tmp_path, capsys):
    (tmp_path / 'work').mkdir()
    out = tmp_path / 'work' / 'usaid.pt2'
    out.write_bytes(b'previous export')
    with file_size_limit(100_000), pytest.raises(SystemExit) as error:
        export_tool.main(['usaid', str(out), '--force'])
    assert 'could not be written' in str(error.value) and 'previous file is kept' in str(error.value)
    assert out.read_bytes() == b'previous export'
    assert [p.name for p in out.parent.iterdir()] == ['usaid.pt2']


def test_a_bare_checkpoint_of_another_network_takes_its_options_from_opt(tmp_path):
    network_g = {'type': 'USAID', 'num_layers': 4, 'num_feat': 8}
    weights = tmp_path / 'small.pth'
    torch.save({'params': __import__('usaid').archs.USAID(num_layers=4, num_feat=8).state_dict()}, weights)
    (tmp_path / 'net.yml').write_text(f'network_g: {network_g}\n')
    assert_one_message(cli('usaid-export', weights, 'plain.pt2', cwd=tmp_path), 'usaid-export',
                       'does not fit the network USAID')
    result = cli('usaid-export', weights, 'small.pt2', '-opt', 'net.yml', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'USAID (' in result.stdout and 'identical' in result.stdout


def test_a_link_planted_beside_the_output_is_never_written_through(seeded, tmp_path):
    victim = tmp_path / 'victim.txt'
    victim.write_text('mine')
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / '.out.pt2.partial').symlink_to(victim)  # the name a fixed temporary file would have
    result = cli('usaid-export', 'usaid', 'out.pt2', cwd=tmp_path / 'work')
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == 'mine' and (tmp_path / 'work' / 'out.pt2').stat().st_size > 1_000_000


def test_the_hub_caches_released_files_are_never_an_output(seeded, tmp_path):
    before = (seeded / 'SSAID.pth').read_bytes()
    assert_one_message(cli('usaid-export', 'usaid', seeded / 'SSAID.pth', '--force', cwd=tmp_path), 'usaid-export',
                       "is a released model's file in torch's hub cache")
    assert (seeded / 'SSAID.pth').read_bytes() == before


def test_an_opset_the_exporter_cannot_write_is_refused(seeded, tmp_path):
    (tmp_path / 'work').mkdir()
    assert_one_message(cli('usaid-export', 'usaid', 'old.onnx', '--opset', '7', cwd=tmp_path / 'work'),
                       'usaid-export', '--opset 7: torch\'s exporter cannot write this network in opset 7')
    assert list((tmp_path / 'work').iterdir()) == []
