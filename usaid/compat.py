"""Every fix BasicSR 1.4.2 needs on a current torch/torchvision stack, in one place.

BasicSR 1.4.2 (2022) is the last release on the package index. :func:`apply` runs once, from ``import usaid``,
before BasicSR is first imported. No BasicSR file is edited: each fix replaces one name through BasicSR's own
modules, so every BasicSR model and entry point benefits, not only U-SAID's. Each fix states its reason and
where upstream tracks it.
"""
import atexit
import datetime
import importlib
import importlib.machinery
import os
import socket
import sys
import types
from os import path as osp

import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel

from usaid import yaml_io
from usaid.errors import CheckpointError, OptionError
from usaid.output_folders import archive_and_make, lock_folder, make_folder

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


# num_gpu and dist_params of the option file being parsed (set by force_yml_checked's parser): BasicSR calls
# init_dist before it has read them into its options, and passes dist_params only to the SLURM launcher
_launch_options = {}


def uses_gpus(num_gpu):
    """Whether a run with ``num_gpu`` (an int or ``'auto'``) uses GPUs on this machine."""
    return torch.cuda.is_available() and num_gpu != 0


def init_dist(launcher, backend=None, **kwargs):
    """Replaces ``basicsr.utils.dist_util.init_dist`` as seen by ``parse_options``.

    1.4.2 hard-codes NCCL and ``torch.cuda.set_device(RANK % num_gpus)``: a CPU run (gloo) divides by zero, a run with
    ``num_gpu: 0`` on a machine with GPUs puts CPU tensors into NCCL collectives, and on several nodes RANK is not the
    local GPU index (upstream: basicsr/utils/dist_util.py, no issue filed). Here the backend is NCCL when the run uses
    GPUs (``num_gpu`` not 0 and GPUs visible), gloo otherwise, or ``dist_params: backend``; the device comes from
    ``LOCAL_RANK`` (set by torchrun); ``dist_params: timeout`` (seconds) bounds every collective.

    1.4.2 also switches every later process to ``spawn``, so each data-loader worker re-imports torch, BasicSR and
    U-SAID; workers that never touch CUDA fork safely from a process that uses it, so the platform default is kept.
    """
    params = {**(_launch_options.get('dist_params') or {}), **kwargs, **({'backend': backend} if backend else {})}
    on_gpus = uses_gpus(_launch_options.get('num_gpu', 'auto'))
    backend = params.get('backend') or ('nccl' if on_gpus else 'gloo')
    if backend == 'nccl' and not on_gpus:
        raise OptionError(_launch_options.get('option_file'), [
            'dist_params: backend: nccl needs GPUs, and this run uses none (num_gpu: 0, or no GPU visible); expected '
            'gloo, or no backend (gloo is chosen for CPU processes)'])
    timeout = params.get('timeout')
    timeout = {'timeout': datetime.timedelta(seconds=timeout)} if timeout else {}
    if launcher == 'pytorch':
        if on_gpus:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend=backend, **timeout)
        _destroy_process_group_at_exit()
    elif launcher == 'slurm':
        from basicsr.utils.dist_util import _init_dist_slurm
        if not on_gpus:
            raise RuntimeError('--launcher slurm needs GPUs; on CPU start the processes with torchrun and '
                               '--launcher pytorch.')
        if timeout:
            raise OptionError(_launch_options.get('option_file'), [
                "dist_params: timeout is not passed on by BasicSR's SLURM launcher; expected no timeout with "
                '--launcher slurm, or the processes started by torchrun (srun torchrun ... --launcher pytorch)'])
        _init_dist_slurm(backend, port=params.get('port'))
    else:
        raise ValueError(f'--launcher {launcher!r}: expected none, pytorch or slurm.')


_failed = False  # set by note_failure: this process is exiting because of an error


def note_failure():
    """Record that this process is exiting because of an error (see :func:`_destroy_process_group_at_exit`)."""
    global _failed
    _failed = True


def _destroy_process_group_at_exit():
    """BasicSR never destroys its process group; gloo's worker threads then abort the interpreter's exit now and then
    ("terminate called without an active exception", pytorch/pytorch#190489), whichever script ran the pipeline
    (``usaid-train``, BasicSR's own ``train.py`` under torchrun). So the group is destroyed at exit, but only after
    success: a rank that failed (an uncaught exception, or :func:`note_failure`) must not wait in a teardown."""
    excepthook = sys.excepthook

    def note_uncaught(kind, error, traceback):
        note_failure()
        excepthook(kind, error, traceback)

    def destroy():
        if not _failed and dist.is_initialized():
            dist.destroy_process_group()

    sys.excepthook = note_uncaught
    atexit.register(destroy)


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
    from usaid.basicsr_sections import OPTIMIZERS  # not at the top: compat runs before basicsr can be imported
    if optim_type not in OPTIMIZERS:
        raise ValueError(f'train: optim_g: type: {optim_type!r} is not an optimizer of torch.optim; '
                         f'expected one of {", ".join(sorted(OPTIMIZERS))}.')
    return OPTIMIZERS[optim_type](params, lr, **kwargs)


def latest_training_state(state_dir):
    """Path of the highest-iteration ``<iter>.state`` in ``state_dir``, or None."""
    if not osp.isdir(state_dir):
        return None
    iters = [int(name[:-len('.state')]) for name in os.listdir(state_dir)
             if name.endswith('.state') and name[:-len('.state')].isdigit()]
    return osp.join(state_dir, f'{max(iters)}.state') if iters else None


def check_own_training_state(opt, resume_path):
    """An explicit ``path:resume_state`` must be a state of this run's own experiment folder: BasicSR resumes a run
    in its folder and takes the networks from its ``models/`` (``check_resume``), so a state of another experiment
    under a new name would fail later, without its networks. Raises ``CheckpointError`` saying what to do instead.

    Args:
        opt (dict): The parsed options.
        resume_path (str): The state given as ``path:resume_state``.
    """
    states = opt['path']['training_states']
    if osp.dirname(osp.realpath(resume_path)) == osp.realpath(states):
        return
    folder, iteration = osp.dirname(osp.abspath(resume_path)), osp.basename(resume_path).split('.')[0]
    if osp.basename(folder) == 'training_states':  # a state of another experiment
        experiment = osp.dirname(folder)
        weights = osp.join(experiment, 'models', f'net_g_{iteration}.pth')
        what_to_do = (f'To resume that run, keep its name ({osp.basename(experiment)}); to start a new run from its '
                      f'weights, set path:pretrain_network_g to {weights} and path:resume_state to ~.')
    else:
        what_to_do = ('To start a new run from the weights saved with it, set path:pretrain_network_g to them and '
                      'path:resume_state to ~.')
    raise CheckpointError(
        f"{resume_path}: path:resume_state is not a training state of this run's experiment folder "
        f"{opt['path']['experiments_root']}; expected a file of {states} (a run resumes in its own folder, with the "
        f'networks of its models folder). {what_to_do}')


def load_training_state(path, device):
    """A training state loaded with ``weights_only=True`` (our states hold tensors and plain containers, plus the
    scheduler's ``Counter`` of milestones: no code from the file runs); ``CheckpointError`` naming ``path`` if it is
    not one.

    Args:
        path (str): The ``<iter>.state`` file.
        device (torch.device): Where its tensors go.
    """
    from collections import Counter
    try:
        with torch.serialization.safe_globals([Counter]):
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001  (garbage makes the unpickler raise anything: KeyError, EOFError, ...)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines and lines[0].startswith('Weights only load failed'):  # torch's advice (load it unsafely) left out
            why = next((line for line in lines[1:] if not line.startswith(('Please file', 'Check the docum'))), '')
            reason = f'it holds objects that only code could make{f": {why}" if why else ""}'
        else:
            reason = f'{type(error).__name__}: {lines[0] if lines else error!r}'
        raise CheckpointError(f'{path}: cannot be loaded as a training state ({reason}); expected a <iter>.state file '
                              "written by BasicSR's training. Move it out of training_states (--auto_resume then "
                              'takes the one before), or set path:resume_state to another state.') from None
    if not (isinstance(state, dict) and isinstance(state.get('iter'), int)):
        what = 'a dict without iter' if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: holds {what}; expected a training state of BasicSR's training (iter, epoch, "
                              'optimizers, schedulers). Move it out of training_states, or set path:resume_state to '
                              'another state.')
    return state


def sampler_layout(opt):
    """``(replicas, batch_size)`` of the training sampler of a run with options ``opt``: the processes that split each
    epoch, and the samples each takes per iteration (as ``basicsr.data.build_dataloader`` batches them)."""
    per_process = 1 if opt['dist'] or opt['num_gpu'] <= 1 else opt['num_gpu']
    return opt['world_size'] if opt['dist'] else 1, opt['datasets']['train']['batch_size_per_gpu'] * per_process


def agree_on_resume_path(path):
    """Under torchrun, the training state rank 0 chose (None: a new run), the same on every rank, which every rank must
    be able to read: a rank that decided from its own disk (another node's ``--auto_resume``) would start from
    iteration 0 with a fresh optimizer while the others resume, and the replicas would drift apart silently.
    Raises ``CheckpointError`` on every rank if a rank cannot see the file."""
    if not dist.is_initialized():
        return path
    chosen = [path]
    dist.broadcast_object_list(chosen, src=0)
    path = chosen[0]
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, (dist.get_rank(), socket.gethostname(), path is None or osp.isfile(path)))
    blind = [f'rank {rank} on {host}' for rank, host, visible in views if not visible]
    if blind:
        raise CheckpointError(
            f'{path}: rank 0 resumes from this training state, which {", ".join(blind)} cannot read; expected the '
            "experiments folder on a filesystem every node shares (BasicSR saves checkpoints on rank 0 only), "
            'or path:resume_state naming a file every node can read.')
    return path


def load_resume_state(opt):
    """Replaces ``basicsr.train.load_resume_state``. 1.4.2 looks for ``experiments/<name>/training_states``
    relative to the current directory (not to the run's ``root_path``), loads with
    ``storage.cuda(torch.cuda.current_device())``, which fails without a GPU and, on a GPU, leaves Adam's step counters
    there (two host syncs per parameter per step), and lets each rank decide from its own disk (upstream:
    basicsr/train.py). Here the state is loaded onto the CPU (the optimizers' ``load_state_dict`` moves each tensor to
    its parameter's device, and keeps the step counters on the CPU), and rank 0 decides (:func:`agree_on_resume_path`).

    It runs before BasicSR makes (or, resuming, reuses) the experiment folder, so the folder is locked here first
    (rank 0, :func:`usaid.output_folders.lock_folder`). An explicit ``path:resume_state`` must be a state of this run
    (:func:`check_own_training_state`); a state that cannot be loaded is a ``CheckpointError`` naming it.
    """
    from basicsr.utils import check_resume

    if not opt['auto_resume'] and opt['path'].get('resume_state') is not None:
        check_own_training_state(opt, opt['path']['resume_state'])
    if opt['rank'] == 0:
        lock_folder(opt['path']['experiments_root'])
    if opt['auto_resume']:
        resume_path = agree_on_resume_path(latest_training_state(opt['path']['training_states']))
        if resume_path is not None:
            opt['path']['resume_state'] = resume_path
    else:
        resume_path = agree_on_resume_path(opt['path'].get('resume_state'))
    if resume_path is None:
        return None
    resume_state = load_training_state(resume_path, torch.device('cpu'))
    check_resume(opt, resume_state['iter'])
    from usaid.checkpoint import saved_network
    for key, weights in opt['path'].items():  # check_resume names net_*_<iter>.pth; logger:save_format may differ
        if key.startswith('pretrain_network') and isinstance(weights, str) and weights.endswith('.pth'):
            label, iteration = osp.basename(weights)[:-len('.pth')].rsplit('_', 1)
            expected = weights[:-len('.pth')] + '.safetensors' if (opt.get('logger') or {}).get(
                'save_format') == 'safetensors' else weights  # named in the message when it is missing
            opt['path'][key] = saved_network(osp.dirname(weights), label, iteration) or expected
    # for ResumableSampler: skip, in the interrupted epoch, the batches already trained on, and the layout they had
    replicas, batch_size = sampler_layout(opt)
    opt['datasets']['train']['resume'] = {
        'iter': resume_state['iter'], 'batch_size': batch_size, 'replicas': replicas, 'state': resume_path,
        'saved_batch_size': resume_state.get('batch_size', batch_size),  # BasicSR's models do not record them
        'saved_replicas': resume_state.get('world_size', replicas)}
    return resume_state


def _force_yml_arguments():
    """The ``-opt`` and ``--force_yml`` arguments of the command line, as BasicSR's parser will read them."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str)
    parser.add_argument('--force_yml', nargs='+', default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.opt, args.force_yml


def force_yml_checked(parse):
    """Wraps ``basicsr.utils.options.parse_options``, which applies ``--force_yml KEY=VALUE`` with
    ``exec('opt["KEY"]=value')``: a key can run code, and garbage (a missing key, no ``=``) ends in a traceback
    (upstream: basicsr/utils/options.py, no issue filed). The entries are applied to the option file first
    (:func:`usaid.yaml_io.apply_overrides`: one ``OptionError`` naming every bad one) and the result is checked
    (:func:`usaid.options.check_options`: BasicSR's parse reads ``datasets``, ``path``, ``name`` ... right away);
    BasicSR then applies them. The file's ``num_gpu`` and ``dist_params`` are kept for :func:`init_dist`, and the
    parsed options are checked by :func:`check_parallelism` before anything is written.

    Args:
        parse (callable): BasicSR's ``parse_options``.
    """
    def parse_options(root_path, is_train=True):
        option_file, entries = _force_yml_arguments()
        if option_file:
            from usaid.options import check_options, load_option_file
            opt = load_option_file(option_file)
            if entries:
                yaml_io.apply_overrides(opt, entries, option_file)
                check_options(opt, f'{option_file} with --force_yml', is_train)
            _launch_options.update(option_file=option_file, num_gpu=opt.get('num_gpu', 'auto'),
                                   dist_params=opt.get('dist_params'))
        opt, args = parse(root_path, is_train)
        check_parallelism(opt)
        return opt, args

    parse_options.__doc__ = f'{parse.__doc__ or ""}\n(--force_yml checked first by usaid.compat.force_yml_checked.)'
    return parse_options


def check_parallelism(opt):
    """BasicSR trains on ``num_gpu > 1`` GPUs without a launcher in one process with ``DataParallel``, silently
    (``num_gpu: auto`` on a machine with several GPUs): the batch and the workers are multiplied by the number of GPUs
    at the same learning rate, and BatchNorm and the USA loss see the batch gathered on the first GPU: a different
    objective than the recipe's (upstream: basicsr/models/base_model.py). Refused unless ``data_parallel: true``.
    """
    if not opt['is_train'] or opt['dist'] or opt['num_gpu'] in (0, 1) or not torch.cuda.is_available():
        return
    if not opt.get('data_parallel', False):
        raise OptionError(_launch_options.get('option_file'), [
            f"num_gpu: {opt['num_gpu']} GPUs in one process would train with DataParallel (batch and workers x "
            f"{opt['num_gpu']}, the same learning rate, BatchNorm and the USA loss on the gathered batch); expected "
            f"torchrun --nproc_per_node={opt['num_gpu']} ... --launcher pytorch, or num_gpu: 1, or data_parallel: "
            'true to train with DataParallel anyway'])
    import logging
    logging.getLogger('basicsr').warning(
        f"data_parallel: training with DataParallel on {opt['num_gpu']} GPUs: the batch is "
        f"{opt['num_gpu']} x batch_size_per_gpu at the same learning rate.")


def apply_determinism(opt):
    """GPU settings of a run, chosen by the top-level ``deterministic``. BasicSR turns the cuDNN benchmark on (fastest
    algorithm per shape, chosen by timing: not reproducible), and torch runs float32 convolutions as TF32 on Ampere and
    newer GPUs; ``deterministic: true`` turns both off and asks torch for deterministic algorithms. Logged either way.
    """
    deterministic = bool(opt.get('deterministic', False))
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic results; read when CUDA initialises its handles
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:  # matrix products are float32 by default; a user's own TF32 choice stands otherwise
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(deterministic)
    if uses_gpus(opt.get('num_gpu', 0)):
        from basicsr.utils import get_root_logger
        get_root_logger().info(
            'deterministic: true: cuDNN benchmark off, deterministic algorithms, no TF32; GPU results repeat exactly'
            if deterministic else 'deterministic: false: cuDNN benchmark on and TF32 convolutions (torch\'s default on '
            'Ampere and newer): fastest, but GPU results vary between runs and differ from float32 on the CPU; '
            'deterministic: true makes them repeat')


def build_model(opt):
    """``basicsr.models.build_model`` after :func:`apply_determinism`: the pipelines build the model after setting
    ``cudnn.benchmark`` themselves (upstream: basicsr/train.py)."""
    from basicsr.models import build_model as build
    apply_determinism(opt)
    return build(opt)


def mkdir_and_rename(path):
    """Replaces ``basicsr.utils.misc.mkdir_and_rename``, which archives whatever ``path`` is by renaming it: a symbolic
    link, or a folder outside the output tree reached through ``..`` in a run's name (upstream: basicsr/utils/misc.py,
    no issue filed). Here :func:`usaid.output_folders.archive_and_make` refuses both, with a message."""
    archive_and_make(path)


def make_exp_dirs(opt):
    """Replaces ``basicsr.utils.misc.make_exp_dirs``, which archives and remakes a run's folder even while another run
    writes to it (upstream: basicsr/utils/misc.py, no issue filed). As in BasicSR only rank 0 makes folders; it first
    takes the folder's lock (:func:`usaid.output_folders.lock_folder`), and a folder that cannot be made is an
    ``OutputFolderError``."""
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] != 0:
        return
    path_opt = opt['path'].copy()
    root = path_opt.pop('experiments_root' if opt['is_train'] else 'results_root')
    lock_folder(root)
    archive_and_make(root)
    for key, path in path_opt.items():
        if not any(word in key for word in ('strict_load', 'pretrain_network', 'resume', 'param_key')):
            make_folder(path)


def _stand_in_version_module():
    """A BasicSR checkout that was not ``setup.py develop``-ed has no ``basicsr/version.py`` (its setup.py writes the
    file), so ``import basicsr`` fails where the checkout root comes first on ``sys.path`` (``torchrun -m usaid.train``
    or ``python -m ...`` run from it). The version is read from the checkout's VERSION file instead (BasicSR#407)."""
    spec = importlib.machinery.PathFinder.find_spec('basicsr')  # sys.path's basicsr, past usaid_autoload's finder
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations or any(osp.isfile(osp.join(location, 'version.py')) for location in locations):
        return
    version_file = osp.join(osp.dirname(locations[0]), 'VERSION')
    version = open(version_file).read().strip() if osp.isfile(version_file) else '0.0.0'
    module = types.ModuleType('basicsr.version', 'Stand-in for a checkout without version.py, by usaid.compat.')
    module.__version__, module.__gitsha__ = version, 'unknown'
    module.version_info = tuple(int(part) if part.isdigit() else part for part in version.split('.'))
    sys.modules['basicsr.version'] = module


# Functions that BasicSR's train.py defines or imports itself: run as a script, the file is ``__main__``, not
# ``basicsr.train``, and these names in its namespace are replaced by :func:`adopt_script` (upstream: basicsr/train.py).
SCRIPT_FIXES = {'load_resume_state': load_resume_state, 'build_model': build_model}


def adopt_script(namespace):
    """Apply :data:`SCRIPT_FIXES` to ``namespace``, the globals of the module whose pipeline is running, if it is a
    script run as ``__main__`` (``python basicsr/train.py``, ``torchrun basicsr/train.py``); modules were fixed by
    :func:`apply` already."""
    if namespace.get('__name__') != '__main__':
        return
    for name, fix in SCRIPT_FIXES.items():
        if callable(namespace.get(name)):
            namespace[name] = fix


def apply():
    """Apply every fix once. Must run before the first ``import basicsr``."""
    global _applied
    if _applied:
        return
    _alias_functional_tensor()
    _stand_in_version_module()

    import basicsr.data.data_sampler
    import basicsr.test
    import basicsr.train
    import basicsr.utils
    import basicsr.utils.misc
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    from usaid.data.resumable_sampler import ResumableSampler

    basicsr.utils.options.init_dist = init_dist
    # PyYAML's full loader runs code from a tag such as !!python/object/apply: option files are read with a safe one
    # (XPixelGroup/BasicSR#768); BasicSR evals a --force_yml value that starts with '[' (no issue filed)
    basicsr.utils.options.ordered_yaml = yaml_io.ordered_yaml
    basicsr.utils.options._postprocess_yml_value = yaml_io.parse_value
    basicsr.utils.options.parse_options = force_yml_checked(basicsr.utils.options.parse_options)
    basicsr.train.parse_options = basicsr.test.parse_options = basicsr.utils.options.parse_options
    # the pipelines and BasicSR's train.py/test.py run as scripts import these from basicsr.utils (after this ran)
    for module in (basicsr.utils, basicsr.utils.misc, basicsr.train, basicsr.test):
        module.make_exp_dirs = make_exp_dirs
    for module in (basicsr.utils, basicsr.utils.misc, basicsr.train):
        module.mkdir_and_rename = mkdir_and_rename
    basicsr.train.load_resume_state = load_resume_state
    basicsr.train.build_model = basicsr.test.build_model = build_model
    # BasicSR restarts an interrupted epoch from its start and ties sample randomness to worker streams; the same
    # sampler, resumable and numbering samples (upstream: basicsr/train.py, basicsr/data/data_sampler.py)
    basicsr.data.data_sampler.EnlargedSampler = ResumableSampler
    basicsr.train.EnlargedSampler = ResumableSampler
    BaseModel.model_to_device = model_to_device
    BaseModel.get_optimizer = get_optimizer
    _applied = True
