"""Declarations of the option-file sections that BasicSR 1.4.2 itself reads, which it never declares: the top level,
``path``, ``train``, ``val``, ``logger``, ``dist_params`` and the data-loader keys of each dataset.

Each field is a key that BasicSR's ``train.py``, ``test.py``, ``utils/options.py``, ``data/__init__.py`` or
``models/{base,sr}_model.py`` reads, with the default it reads it with. A model declares its own ``train`` and
``val`` sections by extending these (:class:`usaid.models.usaid_model.USAIDModel`); :data:`MODEL_SECTIONS` holds
those of BasicSR's models, and :func:`sections_of` finds them for any model.
"""
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY

from usaid.declarations import REQUIRED, Declaration, ExistingFile, Registered, option
from usaid.released import RELEASED

OPTIMIZERS = {name: cls for name, cls in vars(torch.optim).items()
              if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}

Iterations = Annotated[tuple[int, ...], 'a list of iterations']
MAX_ITERATIONS = 2**31 - 1  # BasicSR's logger formats iteration counts as C integers


def section(owner, is_open=False, kind='option'):
    """A section's declaration: frozen, keyword-only, named ``owner`` in messages; ``is_open`` takes other keys;
    ``kind`` 'argument' for the arguments of a class that has no declaration of its own."""
    def make(cls):
        cls.owner, cls.kind, cls.open = owner, kind, is_open
        return dataclass(frozen=True, kw_only=True)(cls)
    return make


@section('the scheduler', kind='argument')
class RestartOptions(Declaration):
    """What BasicSR's two schedulers share: restarts of the schedule, weighted."""
    restart_weights: tuple[float, ...] = option((1,), 'Learning-rate weight of each restart or cycle')
    last_epoch: int = option(-1, 'Iteration the schedule resumes after; -1 to start')


@section('MultiStepRestartLR', kind='argument')
class MultiStepRestartLROptions(RestartOptions):
    """BasicSR's ``MultiStepRestartLR`` (``type: MultiStepLR`` too), whose iteration lists its signature leaves
    untyped."""
    milestones: Iterations = option(REQUIRED, 'Iterations after which the learning rate is multiplied by gamma')
    gamma: float = option(0.1, 'Factor at each milestone', minimum=0)
    restarts: Iterations = option((0,), 'Iterations at which the schedule restarts')


@section('CosineAnnealingRestartLR', kind='argument')
class CosineAnnealingRestartLROptions(RestartOptions):
    """BasicSR's ``CosineAnnealingRestartLR``."""
    periods: Iterations = option(REQUIRED, 'Length of each cosine cycle, in iterations')
    eta_min: float = option(0, 'Smallest learning rate', minimum=0)


# BasicSR 1.4.2's SRModel.setup_schedulers: the scheduler types it builds (both MultiStep names make a
# lr_scheduler.MultiStepRestartLR), with their arguments
SCHEDULERS = {'MultiStepLR': MultiStepRestartLROptions, 'MultiStepRestartLR': MultiStepRestartLROptions,
              'CosineAnnealingRestartLR': CosineAnnealingRestartLROptions}
Network = Annotated[dict, Registered(ARCH_REGISTRY, 'architecture')]
Loss = Annotated[dict, Registered(LOSS_REGISTRY, 'loss')]


@section('the optimizer', kind='argument')
class OptimizerExtra(Declaration):
    """What BasicSR's ``get_optimizer(optim_type, params, lr, **kwargs)`` requires of every optimizer."""
    lr: float = option(REQUIRED, 'Learning rate', minimum=0)


Optimizer = Annotated[dict, Registered(OPTIMIZERS, 'optimizer', expected='an optimizer of torch.optim',
                                       passed=('params',), extra=OptimizerExtra)]
Scheduler = Annotated[dict, Registered(SCHEDULERS, 'scheduler',
                                       expected=f"one of BasicSR's schedulers: {', '.join(SCHEDULERS)}")]


@section('the metric')
class MetricExtra(Declaration):
    better: Literal['higher', 'lower'] = option('higher', 'Which way the metric improves: BasicSR keeps the best value')


InputOrder = Literal['HWC', 'CHW']


@section('the metric', kind='argument')
class CropBorderOptions(Declaration):
    """What every BasicSR metric takes (they take ``**kwargs`` too: without these declarations a misspelt
    ``test_y_channel`` would pass and change the reported figures)."""
    crop_border: int = option(REQUIRED, 'Pixels cropped from each border before scoring', minimum=0)


@section('calculate_psnr_pt', kind='argument')
class TensorMetricOptions(CropBorderOptions):
    """BasicSR's ``calculate_psnr_pt`` and ``calculate_ssim_pt`` (tensors)."""
    test_y_channel: bool = option(False, 'Score the Y channel of YCbCr instead of RGB')


@section('calculate_psnr', kind='argument')
class ImageMetricOptions(TensorMetricOptions):
    """BasicSR's ``calculate_psnr`` and ``calculate_ssim`` (8-bit images)."""
    input_order: InputOrder = option('HWC', 'Layout of the images')


@section('calculate_niqe', kind='argument')
class NIQEOptions(CropBorderOptions):
    """BasicSR's ``calculate_niqe`` (no reference image)."""
    input_order: InputOrder = option('HWC', 'Layout of the image')
    convert_to: Literal['y', 'gray'] = option('y', 'The channel NIQE scores')


BASICSR_METRICS = {'calculate_psnr': ImageMetricOptions, 'calculate_ssim': ImageMetricOptions,
                   'calculate_psnr_pt': TensorMetricOptions, 'calculate_ssim_pt': TensorMetricOptions,
                   'calculate_niqe': NIQEOptions}
Metric = Annotated[dict, Registered(METRIC_REGISTRY, 'metric', passed=('img', 'img2'), extra=MetricExtra,
                                    declarations=BASICSR_METRICS)]


@section('path')
class PathOptions(Declaration):
    pretrain_network_g: Annotated[str, ExistingFile(*RELEASED, what='checkpoint file')] | None = option(
        None, 'Checkpoint network_g starts from (training) or is tested with, or a released model\'s name (fetched '
              'into the torch hub cache)')
    param_key_g: str | None = option('params', 'Key of the checkpoint that holds the weights (params, params_ema)')
    strict_load_g: bool = option(True, 'The checkpoint must fit network_g key for key and shape for shape')
    resume_state: Annotated[str, ExistingFile(what='training state file')] | None = option(
        None, 'Training state (<iter>.state) to resume from')
    # set by BasicSR's parse_options from the experiment's name; a value here is replaced
    experiments_root: str | None = option(None, 'Set by BasicSR: experiments/<name>')
    results_root: str | None = option(None, 'Set by BasicSR: results/<name>')
    models: str | None = option(None, 'Set by BasicSR: experiments/<name>/models')
    training_states: str | None = option(None, 'Set by BasicSR: experiments/<name>/training_states')
    log: str | None = option(None, 'Set by BasicSR: the run\'s folder')
    visualization: str | None = option(None, 'Set by BasicSR: the run\'s visualization folder')


@section('path', is_open=True)
class OpenPathOptions(PathOptions):
    """``path`` of a model this project has no declaration of: other networks' keys (``pretrain_network_d``) too."""


@section('train')
class TrainOptions(Declaration):
    """``train`` as BasicSR's BaseModel and training loop read it, for every model."""
    total_iter: int = option(REQUIRED, 'Iterations to train', minimum=1, maximum=MAX_ITERATIONS)
    warmup_iter: int = option(-1, 'Iterations of linear learning-rate warm-up; -1 for none', minimum=-1)
    ema_decay: float = option(0, 'Decay of the exponential moving average of network_g; 0 for none', minimum=0,
                              maximum=1)
    optim_g: Optimizer = option(REQUIRED, 'Optimizer of network_g: type (any of torch.optim) and its arguments')
    scheduler: Scheduler = option(REQUIRED, 'Learning-rate schedule: type and its arguments')


@section('train')
class SRModelTrainOptions(TrainOptions):
    """``train`` of BasicSR's SRModel (and SwinIRModel)."""
    pixel_opt: Loss | None = option(None, 'Pixel loss: type and its arguments')
    perceptual_opt: Loss | None = option(None, 'Perceptual loss: type and its arguments')


@section('train', is_open=True)
class OpenTrainOptions(TrainOptions):
    """``train`` of a model this project has no declaration of: its own keys (``gan_opt``, ``optim_d``) too."""


@section('val')
class ValOptions(Declaration):
    val_freq: int | None = option(None, 'Validate every this many iterations (required to validate in training)',
                                  minimum=1)
    save_img: bool | None = option(None, 'Save the restored images (required to validate or test: BasicSR reads it)')
    suffix: str | None = option(None, 'Suffix of the saved images\' names; default: the experiment\'s name')
    pbar: bool = option(False, 'Show a progress bar')
    metrics: dict[str, Metric] | None = option(None, 'Metrics by name: type (BasicSR\'s metric registry), arguments '
                                                     'and better')


@section('val', is_open=True)
class OpenValOptions(ValOptions):
    """``val`` of a model this project has no declaration of."""


@section('wandb')
class WandbOptions(Declaration):
    project: str | None = option(None, 'Weights & Biases project; none for no W&B logging')
    resume_id: str | None = option(None, 'W&B run to resume')


@section('logger')
class LoggerOptions(Declaration):
    print_freq: int = option(REQUIRED, 'Print the losses every this many iterations', minimum=1)
    save_checkpoint_freq: int = option(REQUIRED, 'Save a checkpoint and training state every this many iterations',
                                       minimum=1)
    use_tb_logger: bool = option(REQUIRED, 'Write TensorBoard logs to tb_logger/<name> (BasicSR\'s logger reads it)')
    wandb: WandbOptions | None = option(None, 'Weights & Biases logging (needs use_tb_logger)')
    save_format: Literal['pth', 'safetensors'] = option(
        'pth', "USAIDModel's network checkpoints: net_g_<iter>.pth (torch) or .safetensors (no pickle; the training "
               "states stay torch files); BasicSR's own models write .pth")


@section('dist_params')
class DistParams(Declaration):
    backend: Literal['nccl', 'gloo'] | None = option(None, 'torch.distributed backend; default: NCCL with GPUs, '
                                                           'gloo without')
    port: int | None = option(None, 'Master port (SLURM launcher)', minimum=1, maximum=65535)
    timeout: int | None = option(None, 'Seconds a collective may wait for the other processes before the run fails '
                                       "(torchrun launcher); default: torch's (10 minutes for NCCL). Raise it when "
                                       'a validation that runs on rank 0 alone (BasicSR\'s SRModel) takes longer',
                                 minimum=1, maximum=10**9)


@section('datasets:<phase>')
class LoaderOptions(Declaration):
    """The keys BasicSR's ``build_dataset``, ``build_dataloader`` and training loop read from a dataset's options
    (a validation or test loader reads ``pin_memory`` and ``persistent_workers`` only, one image at a time)."""
    name: str = option(REQUIRED, 'The dataset\'s name: results, images and best values are kept by it')
    phase: str | None = option(None, 'Set by BasicSR from the key: train, val_*, test_*')
    scale: int | None = option(None, 'Set by BasicSR from the top-level scale', minimum=1)
    batch_size_per_gpu: int | None = option(None, 'Batch size of each process (or GPU); required for training',
                                            minimum=1)
    num_worker_per_gpu: int | None = option(None, 'Loader worker processes per process (or GPU); required for '
                                                  'training', minimum=0)
    dataset_enlarge_ratio: int = option(1, 'Training: repeat the dataset this many times an epoch', minimum=1)
    use_shuffle: bool = option(True, 'Training: shuffle the samples')
    pin_memory: bool = option(False, 'Pinned host memory for the batches')
    persistent_workers: bool = option(False, 'Keep the workers between epochs')
    prefetch_mode: Literal['cpu', 'cuda'] | None = option(None, 'Training: BasicSR\'s prefetcher: none, cpu or cuda')
    num_prefetch_queue: int = option(1, 'Training: batches the cpu prefetcher holds', minimum=1)

    def rules(self):
        for key in ('batch_size_per_gpu', 'num_worker_per_gpu'):
            if self.phase == 'train' and getattr(self, key) is None:
                yield key, 'missing; expected an integer: the training loader requires it'
        if self.persistent_workers and (self.phase != 'train' or self.num_worker_per_gpu == 0):
            # torch's DataLoader raises for persistent workers without workers; BasicSR's test loaders have none
            yield 'persistent_workers', ('true, but this loader has no worker processes' + (
                ' (num_worker_per_gpu: 0)' if self.phase == 'train' else ' (BasicSR loads validation and test images '
                'in the main process)') + '; expected persistent_workers: false' + (
                ', or num_worker_per_gpu of 1 or more' if self.phase == 'train' else ''))


@section('(top level)')
class OptionFile(Declaration):
    """The top level of an option file. ``train``, ``val`` and ``path`` are the model's (:func:`sections_of`)."""
    name: str = option(REQUIRED, 'The experiment\'s name: experiments/<name>, results/<name>, tb_logger/<name>')
    model_type: str = option(REQUIRED, 'A class of BasicSR\'s model registry, e.g. USAIDModel')
    scale: int = option(1, 'Upscaling factor; 1 for restoration', minimum=1)
    num_gpu: Literal['auto'] | int = option(REQUIRED, 'GPUs: auto (all there are) or a number; 0 for the CPU',
                                            minimum=0)
    manual_seed: int | None = option(None, 'Random seed; none draws one', minimum=0, maximum=2**32 - 1)
    find_unused_parameters: bool = option(False, 'DistributedDataParallel\'s find_unused_parameters')
    data_parallel: bool = option(False, 'Train on num_gpu > 1 GPUs in one process with DataParallel (batch and '
                                        'workers x num_gpu, BatchNorm and the USA loss on the gathered batch); '
                                        'without it such a run is refused: use torchrun')
    deterministic: bool = option(False, 'Reproducible GPU runs: cuDNN benchmark off, deterministic algorithms, no '
                                        'TF32 (slower); CPU runs are reproducible either way')
    datasets: dict = option(REQUIRED, 'Datasets by phase: train, val, val_<any>, test_<any>')
    network_g: Network = option(REQUIRED, 'The network: type (BasicSR\'s architecture registry) and its arguments')
    path: dict = option(REQUIRED, 'Checkpoints to load and resume from')
    train: dict | None = option(None, 'Training: optimizer, schedule, losses (required to train)')
    val: dict | None = option(None, 'Validation and testing: metrics (required to test)')
    logger: LoggerOptions | None = option(None, 'Logging and checkpoint frequencies (required to train)')
    dist_params: DistParams | None = option(None, 'torch.distributed settings')
    # set by BasicSR's parse_options from the command line; a value here is replaced
    is_train: bool | None = option(None, 'Set by BasicSR')
    dist: bool | None = option(None, 'Set by BasicSR')
    rank: int | None = option(None, 'Set by BasicSR')
    world_size: int | None = option(None, 'Set by BasicSR')
    auto_resume: bool | None = option(None, 'Set by BasicSR')
    root_path: str | None = option(None, 'Set by BasicSR')


@dataclass(frozen=True)
class ModelSections:
    """The declarations of the sections a model reads: ``train``, ``val``, ``path``, and ``top`` for top-level keys
    of its own (None if it has none)."""
    train: type
    val: type
    path: type
    top: type | None = None


MODEL_SECTIONS = {
    'SRModel': ModelSections(SRModelTrainOptions, ValOptions, PathOptions),
    'SwinIRModel': ModelSections(SRModelTrainOptions, ValOptions, PathOptions),
}
OPEN_SECTIONS = ModelSections(OpenTrainOptions, OpenValOptions, OpenPathOptions)


def sections_of(model_class):
    """The sections ``model_class`` reads: its own ``option_sections``, BasicSR's models' from
    :data:`MODEL_SECTIONS`, and open sections (known keys checked, others allowed) for any other model."""
    own = getattr(model_class, 'option_sections', None)
    if own is not None:
        return own
    return MODEL_SECTIONS.get(getattr(model_class, '__name__', None), OPEN_SECTIONS)
