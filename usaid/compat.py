"""Every fix BasicSR 1.4.2 needs on a current torch/torchvision stack, in one place.

BasicSR 1.4.2 (2022) is the last release on the package index. :func:`apply` runs once, from ``import usaid``,
before BasicSR is first imported. No BasicSR file is edited: each fix replaces one name through BasicSR's own
modules, so every BasicSR model and entry point benefits, not only U-SAID's. Each fix states its reason and
where upstream tracks it.
"""
import importlib
import os
import sys
import types
from os import path as osp

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DataParallel, DistributedDataParallel

_applied = False


def _alias_functional_tensor():
    """torchvision 0.17 removed ``transforms.functional_tensor``, which ``basicsr/data/degradations.py`` imports
    at ``import basicsr`` (BasicSR#533; fixed on master by PR #624, never released)."""
    name = 'torchvision.transforms.functional_tensor'
    try:
        importlib.import_module(name)
    except ImportError:
        from torchvision.transforms import functional
        alias = types.ModuleType(name, 'Alias kept for BasicSR 1.4.2 by usaid.compat.')
        alias.rgb_to_grayscale = functional.rgb_to_grayscale
        sys.modules[name] = alias


def init_dist(launcher, backend=None, **kwargs):
    """Replaces ``basicsr.utils.dist_util.init_dist`` as seen by ``parse_options``.

    1.4.2 hard-codes NCCL and ``torch.cuda.set_device(RANK % num_gpus)``: a CPU run (gloo) divides by zero, and
    on several nodes RANK is not the local GPU index. Here the device comes from ``LOCAL_RANK`` (set by torchrun)
    and the backend is NCCL with GPUs, gloo without (upstream: basicsr/utils/dist_util.py, no issue filed).
    """
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    use_cuda = torch.cuda.is_available()
    if launcher == 'pytorch':
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend=backend or ('nccl' if use_cuda else 'gloo'), **kwargs)
    elif launcher == 'slurm':
        from basicsr.utils.dist_util import _init_dist_slurm
        if not use_cuda:
            raise RuntimeError('--launcher slurm needs GPUs; on CPU start the processes with torchrun and '
                               '--launcher pytorch.')
        _init_dist_slurm(backend or 'nccl', **kwargs)
    else:
        raise ValueError(f'--launcher {launcher!r}: expected none, pytorch or slurm.')


def model_to_device(self, net):
    """Replaces ``BaseModel.model_to_device``: 1.4.2 builds DDP with ``device_ids=[torch.cuda.current_device()]``,
    which fails on CPU; a CPU module takes no ``device_ids`` (upstream: basicsr/models/base_model.py)."""
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def get_optimizer(self, optim_type, params, lr, **kwargs):
    """Replaces ``BaseModel.get_optimizer``: 1.4.2 accepts only ``Adam``; upstream master later added AdamW, SGD and
    others (unreleased). Any optimizer class in ``torch.optim`` is accepted here, by name."""
    optimizer_class = getattr(torch.optim, str(optim_type), None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        known = sorted(n for n, c in vars(torch.optim).items()
                       if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer)
        raise ValueError(f'train: optim_g: type: {optim_type!r} is not an optimizer of torch.optim; '
                         f'expected one of {", ".join(known)}.')
    return optimizer_class(params, lr, **kwargs)


def map_location(opt):
    """The device a training state is loaded onto: this process's GPU when the run uses GPUs, else the CPU."""
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def latest_training_state(state_dir):
    """Path of the highest-iteration ``<iter>.state`` in ``state_dir``, or None."""
    if not osp.isdir(state_dir):
        return None
    iters = [int(name[:-len('.state')]) for name in os.listdir(state_dir)
             if name.endswith('.state') and name[:-len('.state')].isdigit()]
    return osp.join(state_dir, f'{max(iters)}.state') if iters else None


def load_resume_state(opt):
    """Replaces ``basicsr.train.load_resume_state``. 1.4.2 looks for ``experiments/<name>/training_states``
    relative to the current directory (not to the run's ``root_path``) and loads with
    ``storage.cuda(torch.cuda.current_device())``, which fails without a GPU (upstream: basicsr/train.py)."""
    from basicsr.utils import check_resume

    if opt['auto_resume']:
        resume_path = latest_training_state(opt['path']['training_states'])
        if resume_path is not None:
            opt['path']['resume_state'] = resume_path
    else:
        resume_path = opt['path'].get('resume_state')
    if resume_path is None:
        return None
    # our training states hold only tensors and plain containers, plus the scheduler's Counter of milestones
    from collections import Counter
    with torch.serialization.safe_globals([Counter]):
        resume_state = torch.load(resume_path, map_location=map_location(opt), weights_only=True)
    check_resume(opt, resume_state['iter'])
    # for ResumableSampler: skip, in the interrupted epoch, the batches already trained on
    train_opt = opt['datasets']['train']
    per_process = 1 if opt['dist'] or opt['num_gpu'] <= 1 else opt['num_gpu']  # as basicsr.data.build_dataloader
    train_opt['resume'] = {'iter': resume_state['iter'], 'batch_size': train_opt['batch_size_per_gpu'] * per_process}
    return resume_state


def apply():
    """Apply every fix once. Must run before the first ``import basicsr``."""
    global _applied
    if _applied:
        return
    _alias_functional_tensor()

    import basicsr.data.data_sampler
    import basicsr.train
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    from usaid.data.resumable_sampler import ResumableSampler

    basicsr.utils.options.init_dist = init_dist
    basicsr.train.load_resume_state = load_resume_state
    # BasicSR restarts an interrupted epoch from its start and ties sample randomness to worker streams; the same
    # sampler, resumable and numbering samples (upstream: basicsr/train.py, basicsr/data/data_sampler.py)
    basicsr.data.data_sampler.EnlargedSampler = ResumableSampler
    basicsr.train.EnlargedSampler = ResumableSampler
    BaseModel.model_to_device = model_to_device
    BaseModel.get_optimizer = get_optimizer
    _applied = True
