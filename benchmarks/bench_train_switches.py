"""What the training switches cost or save: ``python benchmarks/bench_train_switches.py [--batch 16] [--usa] ...``

``USAIDModel.optimize_parameters`` on one batch of ``--batch`` x ``--patch``^2 random patches, in one process, the
variants alternated round by round after warm-up (medians, and the median of the per-round ratios to fp32):

  * ``train: precision``: fp32, bf16 and fp16 (autocast; fp16 with its gradient scaler; not by default on a CPU,
    where float16 convolutions are emulated: ``--only fp16`` to measure it);
  * ``train: accumulate``: 1 vs 4 at the same samples per step (the batch split into 4 micro-batches);
  * ``train: non_finite_loss: check``: every_step (one host sync a step) vs at_log (none).

For each variant it also reports the activation memory of one step: the bytes autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``, distinct storages), the peak over the step's micro-batches, which is
what accumulation divides. The network is the recipes' DnCNN (random weights: speed does not depend on them), with
the MSE loss, or with ``--usa`` the U-SAID objective (USA network ResNet-18, random, fp32). Figures in
docs/benchmarks.md ("Training switches").
"""
import argparse
import platform
import statistics
import tempfile
import time

import torch
from basicsr.models import build_model

import usaid  # noqa: F401  (registers U-SAID's components)
from usaid.arguments import resolve_device

VARIANTS = {  # name: train options
    'fp32': {},
    'bf16': {'precision': 'bf16'},
    'fp16': {'precision': 'fp16'},
    'accumulate 4': {'accumulate': 4},
    'check at_log': {'non_finite_loss': {'check': 'at_log'}},
}


def make_model(args, workdir, **train):
    """A USAIDModel like options/train_usaid_sigma25.yml, in memory, with ``train`` options set."""
    options = {
        'ema_decay': 0.999, 'optim_g': {'type': 'Adam', 'lr': 1e-4},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.1},
        'total_iter': 10 ** 9, 'warmup_iter': -1, 'pixel_opt': {'type': 'BatchSSELoss', 'loss_weight': 0.5},
        **train,
    }
    if args.usa:
        options['usa_opt'] = {'type': 'USALoss', 'loss_weight': 0.5,
                              'network': {'type': 'USANet', 'backbone': 'resnet18', 'pretrained': 'none'}}
    torch.manual_seed(0)
    return build_model({
        'name': 'bench', 'model_type': 'USAIDModel', 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'num_gpu': 1 if args.device.type == 'cuda' else 0, 'root_path': workdir, 'network_g': {'type': 'USAID'},
        'train': options, 'datasets': {'train': {'batch_size_per_gpu': args.batch}},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None, 'models': workdir,
                 'training_states': workdir},
        'logger': {'print_freq': 100, 'use_tb_logger': False},
    })


def saved_activation_bytes(model, data):
    """The peak, over one step's micro-batches, of the bytes autograd keeps for the backward pass (each storage
    once); the step is not applied (its gradients are dropped, and the network is copied back)."""
    state = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    current, peak = {}, [0]

    def pack(tensor):
        storage = tensor.untyped_storage()
        current[storage.data_ptr()] = storage.nbytes()
        peak[0] = max(peak[0], sum(current.values()))
        return tensor

    forward = model.net_g.forward

    def forward_per_micro_batch(*inputs):  # a new micro-batch: the previous one's graph was freed by its backward
        current.clear()
        return forward(*inputs)

    model.net_g.forward = forward_per_micro_batch
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.feed_data(data)
            model.optimize_parameters(1)
    finally:
        del model.net_g.forward
        model.net_g.load_state_dict(state)
    return peak[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=8, help='patches per step (a multiple of 4)')
    parser.add_argument('--patch', type=int, default=48)
    parser.add_argument('--usa', action='store_true', help='the U-SAID objective instead of MSE only')
    parser.add_argument('--only', nargs='+', choices=list(VARIANTS),
                        help='variants to run (default: all; on a CPU all but fp16, which is emulated there: measured '
                             '141.8 s against fp32 0.86 s a step at batch 8)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    args.device = torch.device(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == 'cuda':
        torch.cuda.set_device(args.device)
    chosen = args.only or [v for v in VARIANTS if args.device.type == 'cuda' or v != 'fp16']
    variants = ['fp32'] + [v for v in chosen if v != 'fp32']
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(args.batch, 3, args.patch, args.patch, generator=generator)
    data = {'gt': gt, 'lq': gt + torch.randn(gt.shape, generator=generator) * 25 / 255}

    with tempfile.TemporaryDirectory() as workdir:
        models = {name: make_model(args, workdir, **VARIANTS[name]) for name in variants}
        memory = {name: saved_activation_bytes(model, data) for name, model in models.items()}
        times = {name: [] for name in variants}
        for round_ in range(args.warmup + args.repeats):
            for name, model in models.items():
                if args.device.type == 'cuda':
                    torch.cuda.synchronize(args.device)
                start = time.perf_counter()
                model.feed_data(data)
                model.optimize_parameters(round_ + 1)
                if args.device.type == 'cuda':
                    torch.cuda.synchronize(args.device)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
            print(f'round {round_ + 1}: ' + ', '.join(f'{n} {t[-1]:.2f} s' for n, t in times.items() if t), flush=True)

    print(f'torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} '
          f'threads, device {args.device}; batch {args.batch} x {args.patch}x{args.patch}, '
          f"{'U-SAID (ResNet-18 USA)' if args.usa else 'MSE only'}; {args.repeats} rounds after {args.warmup} warm-up")
    print(f"{'variant':<14}{'s/step':>9}{'steps/s':>9}{'img/s':>8}{'/ fp32':>8}{'activations':>13}")
    for name in variants:
        median = statistics.median(times[name])
        ratio = statistics.median(t / f for t, f in zip(times[name], times['fp32']))
        print(f'{name:<14}{median:>9.3f}{1 / median:>9.2f}{args.batch / median:>8.1f}{ratio:>8.3f}'
              f'{memory[name] / 2 ** 20:>10.1f} MiB')


if __name__ == '__main__':
    main()
