import csv
import glob
import re
from collections import OrderedDict
from dataclasses import asdict
from os import path as osp
from typing import Literal

import torch
import torch.distributed as dist
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from usaid.allocator import keep_freed_memory
from usaid.basicsr_sections import Loss, ModelSections, PathOptions, TrainOptions, ValOptions, section
from usaid.checkpoint import canonical_state_dict, check_finite, load_checkpoint, save_atomically, stored_param_key
from usaid.declarations import REQUIRED, Declaration, option
from usaid.errors import NonFiniteLossError
from usaid.released import is_released_name, released_path
from usaid.inference import InferenceNetwork, Precision, precision_autocast
from usaid.visual import colour_maps


@section('non_finite_loss')
class NonFiniteLossOptions(Declaration):
    """What a NaN or infinite loss (or gradient) does: ``stop`` raises :class:`~usaid.errors.NonFiniteLossError`
    naming the iteration and the loss term, before the step is applied (no checkpoint is written after it); ``skip``
    drops that step (weights, optimizer, EMA and BatchNorm statistics unchanged) and logs it, at most ``max_skips``
    times in a run, then stops."""
    action: Literal['stop', 'skip'] = option('stop', 'stop the run, or skip the step')
    max_skips: int = option(10, 'With skip: stop after this many dropped steps', minimum=0)


@section('train')
class USAIDTrainOptions(TrainOptions):
    """``train`` of :class:`USAIDModel`: BasicSR's keys, and the losses and switches of U-SAID."""
    pixel_opt: Loss = option(REQUIRED, "The fidelity loss, e.g. BatchSSELoss (the authors' sum / 2N) or BasicSR's "
                                       'MSELoss (mean)')
    usa_opt: Loss | None = option(None, 'The USA loss (USALoss); without it the model trains with pixel_opt only, '
                                        'the baseline the paper compares against')
    channels_last: bool = option(True, 'channels_last weights and batches: faster convolutions, same maths')
    compile: bool = option(False, 'torch.compile the network (slower to start; measured no faster on CPU)')
    precision: Precision = option('fp32', 'fp32, or bf16 autocast of the network (losses stay float32); the USA '
                                          'network has its own usa_opt:precision')
    non_finite_loss: NonFiniteLossOptions = option(NonFiniteLossOptions(), 'What a NaN or infinite loss or gradient '
                                                                            'does: action stop or skip, max_skips')


@section('val')
class USAIDValOptions(ValOptions):
    """``val`` of :class:`USAIDModel`: BasicSR's keys, TensorBoard images and the inference settings."""
    tb_images: int = option(3, 'TensorBoard gets the input, output, ground truth (and the USA segmentation) of this '
                               'many first images at each validation', minimum=0)
    inference: InferenceNetwork.Options = option(InferenceNetwork.Options(), 'How validation and testing run the '
                                                                              'network (InferenceNetwork)')


@section('(top level)')
class USAIDTopOptions(Declaration):
    keep_freed_memory: bool = option(True, 'Keep freed memory in the process for reuse (usaid.allocator): measured '
                                           '20-45 % faster on CPU')


@MODEL_REGISTRY.register()
class USAIDModel(SRModel):
    """BasicSR's ``SRModel`` trained with a pixel loss plus U-SAID's USA loss, for any ``network_g``. Its sections:
    :data:`option_sections` (``train``: :class:`USAIDTrainOptions`, ``val``: :class:`USAIDValOptions`, top level:
    :class:`USAIDTopOptions`).

    Logged separately: ``l_pix``, ``l_usa`` and ``l_total``. With ``usa_opt: detach_input: true`` the USA loss has
    no gradient to give, so it is computed only on the iterations whose losses BasicSR prints (``logger:
    print_freq``); the updates are the same. The losses stay on the device during the step; they are
    reduced across processes and read to the host only when BasicSR logs them.

    Validation and testing compute BasicSR's metrics image by image; a test run (``usaid-test``) also writes them to
    ``results/<name>/<dataset name>.csv`` (image, sigma, one column per metric), to compare models image by image.

    Checkpoints and training states are written atomically (:func:`~usaid.checkpoint.save_atomically`): a failed
    write leaves the previous file and stops the run with a message; weights with NaN are never saved. A checkpoint
    that does not fit ``network_g`` is refused with its mismatching keys and shapes. Exact resume comes from the data
    side (:class:`~usaid.data.resumable_sampler.ResumableSampler`): no random generator needs saving.
    """

    option_sections = ModelSections(USAIDTrainOptions, USAIDValOptions, PathOptions, USAIDTopOptions)
    _inference_net = None  # set for the duration of a validation
    cri_usa = None  # set by init_training_settings when training with usa_opt

    def __init__(self, opt):
        top = USAIDTopOptions.parse({k: v for k, v in opt.items() if k in USAIDTopOptions.__dataclass_fields__},
                                    'USAIDModel')
        if top.keep_freed_memory:
            keep_freed_memory()
        if opt['is_train']:  # read before SRModel's __init__, which moves the network to channels_last
            self.train_options = USAIDTrainOptions.parse(opt['train'], 'USAIDModel: train')
        self.val_options = USAIDValOptions.parse(opt.get('val') or {}, 'USAIDModel: val')
        super().__init__(opt)

    def model_to_device(self, net):
        """Weights in channels_last before DDP wraps the network: DDP lays out its gradient buckets as it finds them."""
        if self.is_train and self.train_options.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return super().model_to_device(net)

    def feed_data(self, data):
        super().feed_data(data)
        if self.is_train and self.train_options.channels_last:
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)
            if hasattr(self, 'gt'):
                self.gt = self.gt.contiguous(memory_format=torch.channels_last)

    def init_training_settings(self):
        options = self.train_options
        self.cri_usa = build_loss(options.usa_opt).to(self.device) if options.usa_opt else None
        self.loss_terms = OrderedDict()
        self.precision = options.precision
        self.non_finite_action = options.non_finite_loss.action
        self.max_non_finite_skips = options.non_finite_loss.max_skips
        self.non_finite_skips = 0
        super().init_training_settings()
        if options.compile:
            self.net_g.compile()

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        # a step that is not applied must not keep the BatchNorm statistics its forward pass updated (a few KB)
        buffers = [b.clone() for b in self.net_g.buffers()]
        with precision_autocast(self.device, self.precision):
            self.output = self.net_g(self.lq).float()

        losses = OrderedDict(l_pix=self.cri_pix(self.output, self.gt))
        if self.cri_usa is not None and (not self.cri_usa.detach_input or self._is_logged(current_iter)):
            # a detached USA loss cannot change the update: computed only where BasicSR prints the losses
            losses['l_usa'] = self.cri_usa(self.output)
        l_total = sum(losses.values())
        l_total.backward()
        losses['l_total'] = l_total
        self.loss_terms = OrderedDict((name, value.detach()) for name, value in losses.items())
        if not self._step_is_finite(current_iter, buffers):
            return
        self.optimizer_g.step()
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _step_is_finite(self, current_iter, buffers):
        """Whether this step's losses and gradient are finite, agreed by every process (one host sync per step).
        If not, the network's buffers are put back to ``buffers`` and the gradients dropped; then stop with
        :class:`~usaid.errors.NonFiniteLossError`, or, with ``non_finite_loss: action: skip``, log it and return
        False, up to ``max_skips`` times."""
        grads = [p.grad for p in self.net_g.parameters() if p.grad is not None]
        checks = [torch.isfinite(v) for v in self.loss_terms.values()]
        if grads:
            checks.append(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        finite = torch.stack(checks).all().to(torch.int32)
        if self.opt['dist']:  # DDP's gradients are the same everywhere, the losses are per process
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item():
            return True
        torch._foreach_copy_(list(self.net_g.buffers()), buffers)
        self.optimizer_g.zero_grad(set_to_none=True)
        values = ', '.join(f'{name} = {value.item():.4g}' for name, value in self.loss_terms.items())
        bad = [name for name, value in self.loss_terms.items() if not torch.isfinite(value)]
        cause = (f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite" if bad else
                 'the gradient is not finite' + ('' if grads and not all(torch.isfinite(g).all() for g in grads)
                                                 else ' in another process'))
        self.non_finite_skips += 1
        message = f'iteration {current_iter}: {cause} ({values}); the step was not applied'
        if self.non_finite_action == 'skip' and self.non_finite_skips <= self.max_non_finite_skips:
            get_root_logger().warning(f'{message}: skipped ({self.non_finite_skips} of at most '
                                      f'{self.max_non_finite_skips}, train:non_finite_loss:max_skips).')
            return False
        if self.non_finite_action == 'skip':
            message += f', and {self.max_non_finite_skips} steps were skipped already (train:non_finite_loss:max_skips)'
        checkpoints = sorted(glob.glob(osp.join(self.opt['path'].get('models', ''), 'net_g_*.pth')),
                             key=lambda p: int(re.sub(r'\D', '', osp.basename(p)) or -1))
        message += (f'. Last checkpoint: {checkpoints[-1]} (untouched). ' if checkpoints else '. No checkpoint was '
                    'written yet. ') + ('Lower train:optim_g:lr or check the data; set train:non_finite_loss: '
                                        '{action: skip, max_skips: N} to skip rare bad steps.')
        get_root_logger().error(message)
        raise NonFiniteLossError(message)

    def test(self):
        """The network's output for ``self.lq`` through an :class:`~usaid.inference.InferenceNetwork` (the EMA
        network when there is one), under ``torch.inference_mode``. A validation builds it once for all its images."""
        net = self._inference_net or self._build_inference_net()
        with torch.inference_mode():
            self.output = net(self.lq)

    def _build_inference_net(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        return InferenceNetwork(net, **asdict(self.val_options.inference))

    def _is_logged(self, current_iter):
        """Whether BasicSR's training loop prints the losses after this iteration."""
        return current_iter % (self.opt.get('logger') or {}).get('print_freq', 1) == 0

    def get_current_log(self):
        """The last step's losses, averaged over processes (a collective: every rank calls it at print time), and
        the learning rate, which BasicSR prints but does not give TensorBoard (its MessageLogger logs every key here:
        ``losses/l_*`` and ``lr``)."""
        log = self.reduce_loss_dict(self.loss_terms)
        log['lr'] = self.get_current_learning_rate()[0]
        return log

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """SRModel's validation, keeping each image's metrics (for the CSV) instead of only their running sum."""
        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.val_options.metrics or {}
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        rows = []
        self._inference_net = self._build_inference_net()
        try:
            for val_data in tqdm(dataloader, unit='image', disable=not self.val_options.pbar):
                img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
                self.feed_data(val_data)
                self.test()
                output = tensor2img(self.output)
                row = {'image': img_name, 'sigma': float(val_data['sigma'][0]) if 'sigma' in val_data else ''}
                if metrics_opt:
                    images = {'img': output, 'img2': tensor2img(self.gt)}
                    # BasicSR's *_pt metrics take (N, C, H, W) tensors in [0, 1]: the same 8-bit image, as a tensor
                    tensors = {'img': self.output.clamp(0, 1).mul(255).round().div(255), 'img2': self.gt}
                    row.update((name, float(calculate_metric(tensors if opt_['type'].endswith('_pt') else images,
                                                             opt_))) for name, opt_ in metrics_opt.items())
                rows.append(row)
                if save_img:
                    imwrite(output, self._visualization_path(dataset_name, img_name, current_iter))
                if tb_logger is not None and len(rows) <= self.val_options.tb_images:
                    self._log_images(tb_logger, f'{dataset_name}/{img_name}', current_iter)
                del self.lq, self.output
                self.__dict__.pop('gt', None)
        finally:
            self._inference_net = None

        if metrics_opt:
            self.metric_results = {name: sum(r[name] for r in rows) / len(rows) for name in metrics_opt}
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if not self.opt['is_train']:
            self._write_metrics_csv(dataset_name, rows)

    def _log_images(self, tb_logger, tag, current_iter):
        """The noisy input, output and ground truth of one validation image, and the USA network's segmentation and
        uncertainty of the output (colours of :mod:`usaid.visual`), under ``<dataset>/<image>/<kind>``."""
        for kind, image in (('noisy', self.lq), ('output', self.output), ('gt', getattr(self, 'gt', None))):
            if image is not None:
                tb_logger.add_image(f'{tag}/{kind}', image[0].detach().float().clamp(0, 1).cpu(), current_iter)
        if self.cri_usa is not None:
            try:
                labels, uncertainty = self.cri_usa.segmentation_maps(self.output.float())
            except ValueError as error:  # BatchNorm with batch statistics needs more than 1x1 at the deepest stage
                get_root_logger().warning(f'{tag}: no segmentation in TensorBoard: the USA network cannot segment '
                                          f'this image alone ({error}).')
                return
            num_classes = getattr(self.cri_usa.net, 'num_classes', int(labels.max()) + 1)
            segmentation, confidence = colour_maps(labels[0].cpu(), uncertainty[0].cpu(), num_classes)
            tb_logger.add_image(f'{tag}/segmentation', segmentation, current_iter, dataformats='HWC')
            tb_logger.add_image(f'{tag}/uncertainty', confidence, current_iter, dataformats='HWC')

    def _visualization_path(self, dataset_name, img_name, current_iter):
        """Where BasicSR's SRModel saves a validation image."""
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.val_options.suffix or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')

    def _write_metrics_csv(self, dataset_name, rows):
        path = osp.join(self.opt['path']['results_root'], f'{dataset_name}.csv')
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['image', 'sigma'])
            writer.writeheader()
            writer.writerows(rows)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's ``load_network`` (same ``param_key`` rule and log lines), reading the file once: a checkpoint of
        weights (``weights_only``) whose keys and shapes fit ``net``; else a :class:`~usaid.errors.CheckpointError`
        naming them. BasicSR's own version loads without these checks and would read the file a second time."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        released = is_released_name(load_path)
        if released:  # a name (path: pretrain_network_g: usaid): the authors' file, fetched into the hub cache
            load_path = released_path(load_path)
        checkpoint = load_checkpoint(load_path)
        key = stored_param_key(checkpoint, load_path, param_key, allow_bare=released)
        if param_key == 'params_ema' and key == 'params':
            logger.info('Loading: params_ema does not exist, use params.')
        logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{key}].')
        state = canonical_state_dict(load_path, key, net=net, strict=strict, checkpoint=checkpoint)
        self._print_different_keys_loading(net, state, strict)
        net.load_state_dict(state, strict=strict)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's checkpoint format (``{param_key: state dict}``, CPU tensors, no ``module.``), written atomically.
        BasicSR's own version swallows a failed write after three tries and may leave a partial file under the real
        name; here the previous file stays and the run stops with :class:`~usaid.errors.CheckpointError`."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        label = 'latest' if current_iter == -1 else current_iter
        path = osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        checkpoint = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            check_finite(state, path)
            checkpoint[key] = {k: v.cpu() for k, v in state.items()}
        save_atomically(checkpoint, path)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """BasicSR's training state, written atomically, so a kill or a full disk during the write never leaves a
        truncated ``<iter>.state`` for ``--auto_resume`` to pick."""
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
        }
        save_atomically(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))
