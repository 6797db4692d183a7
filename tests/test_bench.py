"""benchmarks/bench.py runs all four comparisons (tiny sizes here; the real figures are in docs/benchmarks.md)."""
import re
import sys

import pytest

from tests.conftest import CHECKPOINTS, KODAK24, REPO, run


@pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                    reason='released checkpoints or Kodak24 not found')
def test_bench_prints_the_four_comparisons(tmp_path):
    out = run([sys.executable, str(REPO / 'benchmarks' / 'bench.py'), '--batch', '2', '--patch', '32',
               '--backbone', 'resnet18', '--repeats', '2', '--warmup', '1', '--sizes', '96x64',
               '--memory-size', '128x96'], cwd=tmp_path).stdout
    for heading in ('## (a)', '## (b)', '## (c)', '## (d)'):
        assert heading in out, out
    assert re.search(r'ours / released-style = \d+\.\d+', out)
    assert re.search(r'U-SAID / MSE-only = \d+\.\d+', out)
    assert re.search(r'DnCNN step \(MSE-only\) at \d+ % of the best kernel', out)
    assert re.search(r'\| 96x64 \| usaid-denoise \(fp32\) \| [\d.]+ \| [\d.]+x', out)
    assert re.search(r'Peak memory \(max RSS\) of `usaid-denoise` on a 128x96 image, tile 512: [\d.]+ GiB', out)
    # the float32 path keeps the plain forward's PSNR
    fp32_change = re.search(r'\| 96x64 \| usaid-denoise \(fp32\) \|.*\| ([-+][\d.]+) \|', out).group(1)
    assert abs(float(fp32_change)) < 0.01
