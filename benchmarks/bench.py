"""U-SAID speed, measured side by side: ``python benchmarks/bench.py [--only a b c d] [--batch 16] ...``

Four comparisons, each in this one process, alternating the variants after warm-up, reporting medians and the
median of the per-round ratios:

  a. the authors' released training step (written out below) vs ``USAIDModel.optimize_parameters`` with
     ``detach_input: true``: the same maths, the same networks, the same batch;
  b. the full U-SAID step (gradient through the frozen USA network) vs the MSE-only DnCNN step;
  c. the FLOPs of those steps (counted by ``torch.utils.flop_counter``) per second, against this machine's best
     single-kernel throughput in the same dtype (a large matmul and a large 3x3 convolution);
  d. ``usaid-denoise``'s inference path vs a plain eager float32 NCHW forward, in megapixels per second, with the
     PSNR of both, and the peak memory of a tiled 4000 x 3000 run. Every path goes from a host image to a host image.

``--device cuda:N`` runs and times everything on that GPU (it becomes the current device, which BasicSR's models
use), with its peak memory; a GPU that is not there is refused.

Networks have random weights (speed does not depend on them), except in (d), which uses a released checkpoint for
the PSNR figures. Results and the commands behind docs/benchmarks.md.
"""
import argparse
import copy
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from os import path as osp

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from basicsr.utils import img2tensor, tensor2img
from torch.utils.flop_counter import FlopCounterMode

import usaid  # noqa: F401  (registers U-SAID's components)
from usaid.allocator import keep_freed_memory
from usaid.arguments import resolve_device
from usaid.archs.usanet_arch import SEED_MEAN
from usaid.data.data_util import add_protocol_noise
from usaid.inference import InferenceNetwork
from usaid.denoiser import denoise, load_denoiser

PRINT_FREQ = 100  # the recipes' logger: print_freq
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = osp.join(osp.dirname(REPO), 'shared')


# ----------------------------------------------------------------------------------------------------------- timing
def synchronize(device):
    """Wait for ``device``'s queued work (CUDA runs asynchronously: a timer read without it times the launches)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def select_device(name):
    """The device ``--device`` names (checked by :func:`usaid.arguments.resolve_device`: a GPU that is not there is
    a ``ValueError`` saying which there are), with its index, made the current CUDA device: BasicSR's models run on
    ``torch.device('cuda')``, the current device, so without this ``--device cuda:1`` would train on cuda:0 while
    the timer waited for cuda:1."""
    device = torch.device(resolve_device(name))
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def device_peak(device, fn):
    """``fn()`` and the peak memory allocated on ``device`` while it ran, in bytes (None on the CPU, where
    :func:`tiled_run_peak_memory` measures the process instead)."""
    if device.type != 'cuda':
        return fn(), None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    synchronize(device)
    return result, torch.cuda.max_memory_allocated(device)


def side_by_side(variants, device, warmup, repeats):
    """Run each ``(name, fn)`` once per round, alternating, ``warmup`` rounds untimed then ``repeats`` timed.
    Returns {name: [seconds per round]}."""
    times = {name: [] for name, _ in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio_median(times, numerator, denominator):
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    print('\n'.join(lines) + '\n', flush=True)


# ------------------------------------------------------------------------------------------------------ the models
def model_options(args, usa, detach_input=False):
    """A training configuration like options/train_usaid_sigma25.yml, in memory, with random USA weights."""
    train = {
        'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.1},
        'total_iter': 10 ** 9, 'warmup_iter': -1,
        'pixel_opt': {'type': 'BatchSSELoss', 'loss_weight': 0.5},
        'channels_last': args.channels_last, 'compile': args.compile, 'precision': args.precision,
    }
    if usa:
        train['usa_opt'] = {'type': 'USALoss', 'loss_weight': 0.5, 'detach_input': detach_input,
                            'precision': args.usa_precision,
                            'network': {'type': 'USANet', 'backbone': args.backbone, 'pretrained': 'none'}}
    return {
        'name': 'bench', 'model_type': 'USAIDModel', 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'num_gpu': 1 if args.device.type == 'cuda' else 0, 'root_path': args.workdir,
        'keep_freed_memory': args.keep_freed_memory,
        'network_g': {'type': 'USAID'}, 'train': train,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'models': args.workdir, 'training_states': args.workdir},
        'logger': {'print_freq': PRINT_FREQ, 'use_tb_logger': False},
    }


def make_model(args, usa, detach_input=False):
    torch.manual_seed(0)
    return build_model(model_options(args, usa, detach_input))


def ours_step(model, data, logged=False):
    """``USAIDModel``'s step, on iterations whose losses BasicSR prints (``logged``) or, as most are, does not."""
    iteration = [0]

    def step():
        iteration[0] += 1
        model.feed_data(data)
        model.optimize_parameters(iteration[0] * PRINT_FREQ + (0 if logged else 1))
    return step


def released_style_step(model, data):
    """The authors' training step (USAID_train.py), written out on copies of ``model``'s networks in their plain
    NCHW float32 form: MSE on the predicted noise; a second denoiser forward for the USA input, which goes to the host
    as NumPy, is demeaned image by image there and comes back; arg-max targets read back to the host, resized with
    OpenCV and scattered one-hot; the focal loss; the per-step training PSNR computed on the host."""
    dncnn = copy.deepcopy(model.get_bare_model(model.net_g).dncnn).to(memory_format=torch.contiguous_format)
    seg = copy.deepcopy(model.cri_usa.net).to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.Adam(dncnn.parameters(), lr=1e-3)
    device = model.device
    rgb_mean = np.array(SEED_MEAN).reshape(3, 1, 1)

    def step():
        # the batch comes from the host at every step, as in ours (feed_data): both time the same copies
        clean, noisy = data['gt'].to(device), data['lq'].to(device)
        optimizer.zero_grad()
        noise = noisy - clean
        loss = F.mse_loss(dncnn(noisy), noise, reduction='sum') / (noisy.size(0) * 2)
        denoised = torch.clamp(noisy - dncnn(noisy), 0., 1.)
        host_out, host_clean = denoised.detach().cpu().numpy(), clean.cpu().numpy()
        psnr_train = np.mean([10 * np.log10(1 / np.mean((o - c) ** 2)) for o, c in zip(host_out, host_clean)])
        seg_input = denoised.data.cpu().numpy()
        for n in range(seg_input.shape[0]):
            seg_input[n] = seg_input[n] - rgb_mean
        seg_output = seg.forward_normalized(torch.from_numpy(seg_input).to(device))
        target = torch.argmax(F.log_softmax(seg_output, dim=1), dim=1).cpu().numpy().astype(np.float32)
        size = seg_output.size(2)
        resized = np.stack([cv2.resize(t, (size, size), interpolation=cv2.INTER_CUBIC) for t in target])
        target = torch.from_numpy(resized.astype(np.int32)).long().to(device)
        one_hot = torch.zeros_like(seg_output).scatter_(1, target.unsqueeze(1), 1.)
        probs = (F.softmax(seg_output, dim=1) * one_hot).sum(1).clamp(1e-7, 1 - 1e-7)
        seg_loss = (-(1 - probs) ** 2 * probs.log()).mean()
        (0.5 * loss + 0.5 * seg_loss).backward()
        optimizer.step()
        return psnr_train
    return step


def training_batch(args):
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(args.batch, 3, args.patch, args.patch, generator=generator)
    noisy = clean + torch.randn(clean.shape, generator=generator) * 25 / 255
    return {'lq': noisy, 'gt': clean}


# ------------------------------------------------------------------------------------------------- the comparisons
def compare_released_style(args, data):
    model = make_model(args, usa=True, detach_input=True)
    logged = f'ours, iteration that prints its losses (1 in {PRINT_FREQ})'
    steps = [('released-style', released_style_step(model, data)), ('ours', ours_step(model, data)),
             (logged, ours_step(model, data, logged=True))]
    times = side_by_side(steps, args.device, args.warmup, args.repeats)
    print(f'## (a) released-style step vs ours, same maths ({args.batch} x {args.patch}x{args.patch}, '
          f'USA {args.backbone}, detach_input: true)\n')
    table(['step', 'median s', 'images/s', 'ratio to released-style'],
          [[name, f'{statistics.median(t):.3f}', f'{args.batch / statistics.median(t):.1f}',
            f'{ratio_median(times, name, "released-style"):.3f}'] for name, t in times.items()])
    ratio = ratio_median(times, 'ours', 'released-style')
    print(f'ours / released-style = {ratio:.3f} (target <= 0.60); on the iterations that print their losses '
          f'{ratio_median(times, logged, "released-style"):.3f}\n')
    return ratio


def step_flops(step):
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def compare_overhead(args, data):
    full, mse_only = make_model(args, usa=True), make_model(args, usa=False)
    steps = [('MSE-only DnCNN', ours_step(mse_only, data)), ('U-SAID', ours_step(full, data))]
    times = side_by_side(steps, args.device, args.warmup, args.repeats)
    ratio = ratio_median(times, 'U-SAID', 'MSE-only DnCNN')
    flops = {name: step_flops(step) for name, step in steps}
    # on a GPU, the memory of one more step of each
    peaks = {name: device_peak(args.device, step)[1] for name, step in steps} if args.device.type == 'cuda' else {}
    print(f'## (b) U-SAID overhead: full step vs MSE-only step ({args.batch} x {args.patch}x{args.patch}, '
          f'USA {args.backbone})\n')
    rows = []
    for name, t in times.items():
        median = statistics.median(t)
        row = [name, f'{median:.3f}', f'{args.batch / median:.1f}', f'{flops[name] / 1e9:.1f}']
        rows.append(row + ([f'{peaks[name] / 2 ** 30:.2f}'] if peaks else []))
    table(['step', 'median s', 'images/s', 'GFLOP per step'] + ([f'peak {args.device} GiB'] if peaks else []), rows)
    print(f'U-SAID / MSE-only = {ratio:.3f} (target <= 1.25)\n')
    return times, flops


def peak_throughput(args):
    """GFLOP/s of a large matmul and of a large 3x3 convolution (NCHW and channels_last) in the step's dtype."""
    dtype = torch.bfloat16 if args.precision == 'bf16' else torch.float32
    size = 4096
    a = torch.randn(size, size, device=args.device, dtype=dtype)
    b = torch.randn(size, size, device=args.device, dtype=dtype)
    x = torch.randn(16, 64, 128, 128, device=args.device, dtype=dtype)
    w = torch.randn(64, 64, 3, 3, device=args.device, dtype=dtype)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    kernels = [('matmul 4096^3', lambda: a @ b, 2 * size ** 3),
               ('conv 3x3 64->64, 16x128x128, NCHW', lambda: F.conv2d(x, w, padding=1), 2 * x.numel() * 64 * 9),
               ('conv 3x3 64->64, 16x128x128, channels_last', lambda: F.conv2d(x_cl, w_cl, padding=1),
                2 * x.numel() * 64 * 9)]
    times = side_by_side([(name, fn) for name, fn, _ in kernels], args.device, args.warmup, args.repeats)
    return {name: flops / statistics.median(times[name]) for name, _, flops in kernels}


def compare_compute(args, overhead):
    times, flops = overhead
    peaks = peak_throughput(args)
    best_name, best = max(peaks.items(), key=lambda item: item[1])
    print(f'## (c) achieved compute ({args.precision}, {torch.get_num_threads()} threads)\n')
    rows = [[name, f'{value / 1e9:.0f}', ''] for name, value in peaks.items()]
    for name in times:
        achieved = flops[name] / statistics.median(times[name])
        rows.append([f'{name} step', f'{achieved / 1e9:.0f}', f'{100 * achieved / best:.0f} %'])
    table(['kernel', 'GFLOP/s', 'of best kernel'], rows)
    share = flops['MSE-only DnCNN'] / statistics.median(times['MSE-only DnCNN']) / best
    print(f'DnCNN step (MSE-only) at {100 * share:.0f} % of the best kernel ({best_name}) (target >= 70 %). '
          'FLOPs: torch.utils.flop_counter over one whole step (convolutions forward and backward, matmuls).\n')
    return share


def test_image(size):
    """A Kodak24 photograph, tiled by reflection to ``size`` = (width, height), as float32 RGB in [0, 1]."""
    img = cv2.imread(osp.join(SHARED, 'testsets', 'Kodak24', 'kodim03.png'), cv2.IMREAD_COLOR)[..., ::-1]
    width, height = size
    reps = (-(-height // img.shape[0]), -(-width // img.shape[1]), 1)
    return np.ascontiguousarray(np.tile(img, reps)[:height, :width]).astype(np.float32) / 255.


def psnr_of(output, clean):
    return calculate_psnr(tensor2img(output), tensor2img(img2tensor(clean, bgr2rgb=False).unsqueeze(0)), 0)


def with_glibc_allocator(fn):
    """``fn`` run with glibc's own allocator thresholds, i.e. what a plain PyTorch process gets."""
    def run(*args):
        keep_freed_memory(False)
        try:
            return fn(*args)
        finally:
            keep_freed_memory(True)
    return run


PLAIN = 'plain eager fp32 NCHW'


def inference_paths(net, args):
    """The compared ways to denoise, as ``(name, fn)``: each ``fn`` takes the noisy image on the host and returns
    the result on the host, as ``usaid-denoise`` does (:func:`usaid.denoiser.denoise`), so on a GPU every path
    times the same copies to and from the device. Also returns the fp32 InferenceNetwork."""
    fast, fast_bf16 = InferenceNetwork(net), InferenceNetwork(net, precision='bf16')
    paths = [(PLAIN, lambda img: net(img.to(args.device)).cpu()),
             ('usaid-denoise (fp32)', lambda img: denoise(fast, img, args.tile, 32, args.device)),
             ('usaid-denoise --precision bf16', lambda img: denoise(fast_bf16, img, args.tile, 32, args.device))]
    if args.keep_freed_memory:
        paths.insert(1, (f'{PLAIN}, freed memory kept', paths[0][1]))
        paths[0] = (PLAIN, with_glibc_allocator(paths[0][1]))
    return paths, fast


def compare_inference(args):
    net = load_denoiser(args.weights, device=args.device)
    paths, fast = inference_paths(net, args)
    on_gpu = args.device.type == 'cuda'
    print(f'## (d) inference, released U-SAID ({fast.conv_algo} convolutions, tile {args.tile})\n')
    rows = []
    for size in args.sizes:
        clean = test_image(size)
        noisy = img2tensor(add_protocol_noise(clean, 25, 0).astype(np.float32), bgr2rgb=False).unsqueeze(0)
        repeats = args.repeats if size[0] * size[1] <= 10 ** 6 else args.large_repeats
        with torch.inference_mode():
            psnr, peak = {}, {}
            for name, fn in paths:
                output, peak[name] = device_peak(args.device, lambda fn=fn: fn(noisy))
                psnr[name] = psnr_of(output, clean)
            times = side_by_side([(name, lambda fn=fn: fn(noisy)) for name, fn in paths], args.device, 1, repeats)
        megapixels = size[0] * size[1] / 1e6
        for name in times:
            row = [f'{size[0]}x{size[1]}', name, f'{megapixels / statistics.median(times[name]):.3f}']
            references = paths[:1 + args.keep_freed_memory]
            row += [f'{ratio_median(times, reference, name):.2f}x' for reference, _ in references]
            row += [f'{psnr[name]:.3f}', f'{psnr[name] - psnr[PLAIN]:+.4f}']
            rows.append(row + ([f'{peak[name] / 2 ** 20:.0f}'] if on_gpu else []))
    speedups = ['speed-up vs plain'] + (['vs plain, memory kept'] if args.keep_freed_memory else [])
    memory = [f'peak {args.device} MiB'] if on_gpu else []
    table(['image', 'path', 'MP/s', *speedups, 'PSNR (sigma 25)', 'PSNR change', *memory], rows)
    if args.memory_size:
        peak = tiled_run_peak_memory(args)
        print(f'Peak memory (max RSS) of `usaid-denoise` on a {args.memory_size[0]}x{args.memory_size[1]} image, '
              f'tile {args.tile}: {peak / 2 ** 30:.2f} GiB\n')
        if on_gpu:
            big = img2tensor(test_image(args.memory_size), bgr2rgb=False).unsqueeze(0)
            with torch.inference_mode():
                _, device_bytes = device_peak(args.device, lambda: denoise(fast, big, args.tile, 32, args.device))
            print(f'Peak {args.device} memory (torch.cuda.max_memory_allocated) of the same tiled run, fp32: '
                  f'{device_bytes / 2 ** 30:.2f} GiB\n')


def tiled_run_peak_memory(args):
    with tempfile.TemporaryDirectory() as tmp:
        src = osp.join(tmp, 'big.png')
        cv2.imwrite(src, (test_image(args.memory_size)[..., ::-1] * 255).round().astype(np.uint8))
        command = [sys.executable, '-m', 'usaid.tools.denoise', src, osp.join(tmp, 'out.png'), '-w', args.weights,
                   '--tile', str(args.tile), '--device', str(args.device)]
        if not args.keep_freed_memory:
            command.append('--no-keep-freed-memory')
        subprocess.run(command, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------------------- main
def size_arg(text):
    width, _, height = text.partition('x')
    return int(width), int(height)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='bench.py', description=__doc__.splitlines()[0])
    parser.add_argument('--only', nargs='+', choices='abcd', default=list('abcd'), help='comparisons to run')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1, ...')
    parser.add_argument('--batch', type=int, default=64, help='training batch (the recipes: 64)')
    parser.add_argument('--patch', type=int, default=48, help='training patch size')
    parser.add_argument('--backbone', default='resnet101', help='USA network backbone')
    parser.add_argument('--threads', type=int, help='CPU threads (default: torch\'s, one per core)')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds per comparison')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--precision', choices=('fp32', 'bf16'), default='fp32', help="train: precision")
    parser.add_argument('--usa-precision', choices=('fp32', 'bf16'), default='fp32', help='usa_opt: precision')
    parser.add_argument('--no-channels-last', dest='channels_last', action='store_false', help='train: channels_last')
    parser.add_argument('--compile', action='store_true', help='train: compile')
    parser.add_argument('--weights', default=osp.join(SHARED, 'seed', 'checkpoints', 'USAID.pth'),
                        help='denoiser checkpoint for (d)')
    parser.add_argument('--sizes', nargs='+', type=size_arg, default=[(500, 500), (2000, 1500)],
                        help='inference image sizes, WxH')
    parser.add_argument('--large-repeats', type=int, default=2, help='timed rounds for images over 1 megapixel')
    parser.add_argument('--tile', type=int, default=512, help="usaid-denoise's --tile")
    parser.add_argument('--no-keep-freed-memory', dest='keep_freed_memory', action='store_false',
                        help="glibc's allocator thresholds throughout (usaid/allocator.py)")
    parser.add_argument('--memory-size', type=size_arg, default=(4000, 3000),
                        help='image size of the peak-memory run, WxH; 0x0 to skip')
    args = parser.parse_args(argv)
    try:
        args.device = select_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    args.memory_size = args.memory_size if all(args.memory_size) else None
    return args


def describe_machine(args):
    if args.device.type == 'cuda':
        name = torch.cuda.get_device_name(args.device)
    else:
        with open('/proc/cpuinfo') as cpuinfo:
            name = next((line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name')),
                        platform.processor())
    print(f'# U-SAID benchmark on {args.device}: {name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, '
          f'torch {torch.__version__}, Python {platform.python_version()}, freed memory '
          f'{"kept (usaid/allocator.py)" if args.keep_freed_memory else "returned (glibc defaults)"}\n')


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory(args.keep_freed_memory)
    describe_machine(args)
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        data = training_batch(args)
        if 'a' in args.only:
            compare_released_style(args, data)
        if 'b' in args.only or 'c' in args.only:
            overhead = compare_overhead(args, data)
        if 'c' in args.only:
            compare_compute(args, overhead)
    if 'd' in args.only:
        compare_inference(args)


if __name__ == '__main__':
    main()
