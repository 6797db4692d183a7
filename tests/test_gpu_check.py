"""``make gpu-check`` (benchmarks/gpu_check.py) and the ``cuda`` marker, without a GPU (or with it hidden)."""
import subprocess
import sys

import pytest
import torch

from tests.conftest import NO_CUDA, REPO, cuda_skip_reason, run

GPU_CHECK = REPO / 'benchmarks' / 'gpu_check.py'


def test_a_cuda_test_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert cuda_skip_reason(1) == NO_CUDA == 'no CUDA device (torch.cuda.is_available() is False)'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert cuda_skip_reason(1) is None
    assert cuda_skip_reason(2) == 'needs 2 GPUs (torch.cuda.device_count() is 1)'
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert cuda_skip_reason(2) is None


def test_without_a_gpu_every_cuda_test_skips_and_the_check_says_so(tmp_path):
    no_gpu = {'CUDA_VISIBLE_DEVICES': ''}
    collected = run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-m', 'cuda', 'tests/test_cuda.py',
                     '-p', 'no:cacheprovider'], cwd=REPO, env=no_gpu).stdout
    tests = [line.split('::', 1)[1] for line in collected.splitlines() if line.startswith('tests/test_cuda.py::')]
    assert len(tests) >= 10
    figures = tmp_path / 'figures.md'
    result = run([sys.executable, str(GPU_CHECK), '--output', str(figures)], cwd=tmp_path, env=no_gpu)
    banner = (f'no GPU: {len(tests)} CUDA tests skipped ({len(tests)} x no CUDA device (torch.cuda.is_available() is '
              'False)), benchmarks not run')
    assert f'gpu-check: {banner}.' in result.stdout and f'Figures: {figures}' in result.stdout
    text = figures.read_text()
    assert f'**{banner}.**' in text and 'Benchmark' not in text
    for test in tests:
        assert f'| test_cuda.py::{test} | skipped | 0.0 | {NO_CUDA} |' in text
    assert (tmp_path / 'cuda-tests.xml').exists()


@pytest.mark.parametrize('status', [1, 2, 5])
def test_a_check_whose_tests_fail_or_cannot_run_exits_1(status, tmp_path, monkeypatch, capsys):
    """pytest's exit status 1 (a test failed), 2 (a collection error), 5 (no test marked cuda): the check failed,
    with or without a GPU."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_check', GPU_CHECK)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(gpu_check.subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(a, status))
    assert gpu_check.main(['--output', str(tmp_path / 'figures.md')]) == 1
    assert 'gpu-check: no GPU: 0 CUDA tests skipped' in capsys.readouterr().out
