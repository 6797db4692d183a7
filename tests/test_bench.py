"""benchmarks/bench.py runs all four comparisons (tiny sizes here; the real figures are in docs/benchmarks.md)."""
import re
import sys

import pytest
import torch

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


# ---- the device: checked, made current, synchronized; every inference path does the same host copies -------------

def load_bench():
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench', REPO / 'benchmarks' / 'bench.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs, recording which device is made current."""
    current = [0]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: current[0])
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: current.__setitem__(0, torch.device(device).index))
    return current


def test_a_named_gpu_becomes_the_current_device_that_basicsr_models_use(two_gpus):
    assert bench.select_device('cuda:1') == torch.device('cuda', 1) and two_gpus == [1]
    assert bench.select_device('cuda') == torch.device('cuda', 1)  # plain cuda: the current one, with its index
    two_gpus[0] = 0
    assert bench.select_device('auto') == torch.device('cuda', 0) and two_gpus == [0]
    assert bench.select_device('cpu') == torch.device('cpu')


@pytest.mark.parametrize('device, gpus, message', [
    ('cuda:2', 2, '--device cuda:2: this machine has 2 GPU(s), cuda:0 to cuda:1'),
    ('cuda', 0, '--device cuda: this machine has no GPU that torch can use'),
    ('gpu', 0, "--device 'gpu': not a device name; expected auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_there_is_refused_up_front(device, gpus, message, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(['--device', device])
    assert exit_.value.code == 2 and f'bench.py: error: {message}' in capsys.readouterr().err


def test_the_timer_waits_for_the_device_it_times(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: events.append(('sync', device)))
    gpu1 = torch.device('cuda', 1)
    times = bench.side_by_side([('a', lambda: events.append('a')), ('b', lambda: events.append('b'))], gpu1, 1, 2)
    assert events == [('sync', gpu1), 'a', ('sync', gpu1), ('sync', gpu1), 'b', ('sync', gpu1)] * 3
    assert [len(t) for t in times.values()] == [2, 2]  # the warm-up round is not timed
    events.clear()
    assert bench.device_peak(torch.device('cpu'), lambda: 7) == (7, None) and events == []


def test_every_inference_path_copies_the_whole_image_to_the_device_and_back_once(monkeypatch):
    """On a GPU the plain forward must not skip the copies that usaid-denoise makes: each path takes the image on the
    host and returns it there. Recorded here as the calls that move a whole image (CPU stands in for the GPU)."""
    from tests.test_inference import trained_like_denoiser
    image = torch.rand(1, 3, 40, 48)
    moves = []
    to, cpu = torch.Tensor.to, torch.Tensor.cpu

    def recording(kind, method):
        def move(self, *args, **kwargs):
            if self.shape == image.shape and (kind == 'cpu' or isinstance(args[0] if args else None, torch.device)):
                moves.append(kind)
            return method(self, *args, **kwargs)
        return move

    args = bench.parse_args(['--device', 'cpu', '--tile', '512'])
    paths, _ = bench.inference_paths(trained_like_denoiser(), args)
    monkeypatch.setattr(torch.Tensor, 'to', recording('to device', to))
    monkeypatch.setattr(torch.Tensor, 'cpu', recording('cpu', cpu))
    with torch.inference_mode():
        for name, fn in paths:
            moves.clear()
            output = fn(image)
            assert output.device.type == 'cpu' and moves == ['to device', 'cpu'], (name, moves)
    assert [name for name, _ in paths][0] == bench.PLAIN and len(paths) == 4
