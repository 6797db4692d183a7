import contextlib
import csv
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
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from usaid.allocator import keep_freed_memory
from usaid.basicsr_sections import Loss, ModelSections, PathOptions, TrainOptions, ValOptions, section
from usaid.compat import sampler_layout
from usaid.checkpoint import (SAVE_FORMATS, canonical_state_dict, check_finite, load_checkpoint, save_atomically,
                              save_network_file, saved_networks, stored_param_key)
from usaid.declarations import REQUIRED, Declaration, option
from usaid.errors import NonFiniteLossError
from usaid.released import is_released_name, released_path
from usaid.inference import InferenceNetwork, TrainingPrecision, precision_autocast
from usaid.visual import colour_maps


@section('non_finite_loss')
class NonFiniteLossOptions(Declaration):
    """What a NaN or infinite loss (or gradient) does: ``stop`` raises :class:`~usaid.errors.NonFiniteLossError`
    naming the iteration and the loss term, before the step is applied (no checkpoint is written after it); ``skip``
    drops that step (weights, optimizer, EMA and BatchNorm statistics unchanged) and logs it, at most ``max_skips``
    times in a run, then stops."""
    action: Literal['stop', 'skip'] = option('stop', 'stop the run, or skip the step')
    max_skips: int = option(10, 'With skip: stop after this many dropped steps', minimum=0)
    check: Literal['every_step', 'at_log'] = option(
        'every_step', 'every_step: each step is checked before it is applied (one host sync a step); at_log: the '
                      'check stays on the device and is read where BasicSR prints the losses and before a checkpoint '
                      'is written (no sync; action stop only; a bad step is applied and the run stops at the next '
                      'print, from the last checkpoint)')

    def rules(self):
        if self.check == 'at_log' and self.action == 'skip':
            yield 'check', ('at_log cannot skip a step: it learns of it after the step is applied; expected action: '
                            'stop with check: at_log, or check: every_step with action: skip')


@section('grad_clip')
class GradClipOptions(Declaration):
    """Gradient clipping by norm (``torch.nn.utils.clip_grad_norm_``): the gradient of all of ``network_g``'s
    parameters is scaled down to ``max_norm`` when its norm is larger. The norm before clipping is logged as
    ``grad_norm`` at ``logger:print_freq``."""
    max_norm: float = option(REQUIRED, 'The largest gradient norm a step may apply (more than 0)', minimum=0)
    norm_type: float | Literal['inf'] = option(2.0, 'The norm: 2 (Euclidean), 1, any p >= 1, or inf (the largest '
                                                    'absolute value)', minimum=1)

    def rules(self):
        if self.max_norm == 0:
            yield 'max_norm', 'found 0, which clips every gradient to nothing (no step would train); expected > 0'


@section('train')
class USAIDTrainOptions(TrainOptions):
    """``train`` of :class:`USAIDModel`: BasicSR's keys, and the losses and switches of U-SAID."""
    pixel_opt: Loss = option(REQUIRED, "The fidelity loss, e.g. BatchSSELoss (the authors' sum / 2N) or BasicSR's "
                                       'MSELoss (mean)')
    usa_opt: Loss | None = option(None, 'The USA loss (USALoss); without it the model trains with pixel_opt only, '
                                        'the baseline the paper compares against')
    channels_last: bool = option(True, 'channels_last weights and batches: faster convolutions, same maths')
    compile: bool = option(False, 'torch.compile the network (slower to start; measured no faster on CPU)')
    precision: TrainingPrecision = option(
        'fp32', 'fp32, bf16 autocast, or fp16 autocast with a gradient scaler (its state is in the training state) '
                'of the network; losses stay float32; the USA network has its own usa_opt:precision')
    grad_clip: GradClipOptions | None = option(None, 'Clip the gradient by norm (max_norm, norm_type); the norm '
                                                     'before clipping is logged as grad_norm')
    accumulate: int = option(1, 'Split each batch of batch_size_per_gpu into this many micro-batches, one forward '
                                'and backward each, and step once: the same update with 1/N of the activation '
                                'memory; an iteration stays one optimizer step', minimum=1)
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

    Training switches (``train``): ``precision`` (fp32, bf16, or fp16 with a ``torch.amp.GradScaler`` whose state is
    in the training state), ``grad_clip`` (by norm, the norm before clipping logged), ``accumulate`` (each batch in N
    micro-batches, one optimizer step: an iteration stays one step on the whole batch), ``non_finite_loss: check``
    (every step, one host sync; or at BasicSR's prints, none); ``logger: save_format`` (``pth`` or ``safetensors``
    network checkpoints). docs/training.md#speed-switches.

    Validation and testing compute BasicSR's metrics image by image; a test run (``usaid-test``) also writes them to
    ``results/<name>/<dataset name>.csv`` (image, sigma, one column per metric), to compare models image by image.

    Checkpoints and training states are written atomically (:func:`~usaid.checkpoint.save_atomically`): a failed
    write leaves the previous file and stops the run with a message; weights with NaN are never saved. A checkpoint
    that does not fit ``network_g`` is refused with its mismatching keys and shapes. Exact resume comes from the data
    side (:class:`~usaid.data.resumable_sampler.ResumableSampler`): no random generator needs saving.
    """

    option_sections = ModelSections(USAIDTrainOptions, USAIDValOptions, PathOptions, USAIDTopOptions)
    _inference_net = None  # set for the duration of a validation
    current_iter = 0  # the iteration of the last optimize_parameters
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
        """The batch on the model's device; ``non_blocking``: from a pinned batch (``pin_memory: true`` in the
        dataset's options) the copy overlaps the device's work instead of stalling the host."""
        layout = torch.channels_last if self.is_train and self.train_options.channels_last else torch.preserve_format
        self.lq = data['lq'].to(self.device, non_blocking=True, memory_format=layout)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True, memory_format=layout)

    def init_training_settings(self):
        options = self.train_options
        batch_size = self.opt['datasets'].get('train', {}).get('batch_size_per_gpu') if 'datasets' in self.opt else None
        if batch_size and batch_size % options.accumulate:
            raise ValueError(f'USAIDModel: train: accumulate: {options.accumulate} does not divide '
                             f'datasets:train:batch_size_per_gpu {batch_size}; expected a divisor of it (each batch is '
                             'split into accumulate micro-batches of equal size).')
        self.cri_usa = build_loss(options.usa_opt).to(self.device) if options.usa_opt else None
        self.loss_terms = OrderedDict()
        self.precision = options.precision
        # fp16's small range needs a scaled loss; a scaler's skipped steps (overflow) are not non-finite stops
        self.scaler = torch.amp.GradScaler(self.device.type) if options.precision == 'fp16' else None
        self.grad_norm = None  # the last step's norm before clipping, on the device, with grad_clip
        self.non_finite_action = options.non_finite_loss.action
        self.max_non_finite_skips = options.non_finite_loss.max_skips
        self.non_finite_skips = 0
        self.first_non_finite = None  # with check: at_log, the first bad iteration since the last check (a tensor)
        super().init_training_settings()
        if options.compile:
            self.net_g.compile()

    def optimize_parameters(self, current_iter):
        """One optimizer step on the batch of :meth:`feed_data`, in ``train:accumulate`` micro-batches; the non-finite
        guard, ``grad_clip``, the fp16 scaler, then the step and the EMA."""
        self.optimizer_g.zero_grad(set_to_none=True)
        # a step that is not applied must not keep the BatchNorm statistics its forward pass updated (a few KB)
        buffers = [b.clone() for b in self.net_g.buffers()]
        self.current_iter = current_iter
        self.loss_terms = self._forward_backward(current_iter)
        losses_finite = torch.stack([torch.isfinite(v) for v in self.loss_terms.values()]).all()
        params = [p for p in self.net_g.parameters() if p.grad is not None]
        if self.scaler is not None:
            # the scaler checks the gradient itself: here the losses only, before unscale_ (a skip leaves it as it was)
            if not self._step_is_finite(current_iter, losses_finite, params, buffers):
                return
            self.scaler.unscale_(self.optimizer_g)
            norm = self._clip(params)
            self.scaler.step(self.optimizer_g)
            found_inf = sum(self.scaler._found_inf_per_device(self.optimizer_g).values()).reshape(())
            self.scaler.update()
            # a step the scaler skipped keeps no BatchNorm statistics and moves no EMA, decided on the device
            for buffer, saved in zip(self.net_g.buffers(), buffers):
                buffer.copy_(torch.where(found_inf > 0, saved, buffer))
            self._update_ema(1 - found_inf)
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
        finite = losses_finite if norm is None else losses_finite & torch.isfinite(norm)
        if not self._step_is_finite(current_iter, finite, params, buffers):
            return
        self._clip(params, norm)
        self.optimizer_g.step()
        self._update_ema()

    def _forward_backward(self, current_iter):
        """Forward and backward passes over the ``train:accumulate`` micro-batches of the batch, each loss weighted
        by its share of the batch, so the summed gradient is the whole batch's (exactly, for per-sample losses and a
        network without batch statistics); DDP reduces the gradient once, at the last one. The losses, summed."""
        parts = self.train_options.accumulate
        lq, gt = torch.tensor_split(self.lq, parts), torch.tensor_split(self.gt, parts)
        terms, outputs = OrderedDict(), []
        for index, (lq_part, gt_part) in enumerate(zip(lq, gt)):
            weight = lq_part.shape[0] / self.lq.shape[0]
            last = index == parts - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.net_g, 'no_sync') else self.net_g.no_sync()
            with sync:
                with precision_autocast(self.device, self.precision):
                    output = self.net_g(lq_part).float()
                losses = OrderedDict(l_pix=self.cri_pix(output, gt_part))
                if self.cri_usa is not None and (not self.cri_usa.detach_input or self._is_logged(current_iter)):
                    # a detached USA loss cannot change the update: computed only where BasicSR prints the losses
                    losses['l_usa'] = self.cri_usa(output)
                l_total = sum(losses.values()) * weight
                (l_total if self.scaler is None else self.scaler.scale(l_total)).backward()
            losses['l_total'] = l_total
            for name, value in losses.items():
                value = value.detach() * (1 if name == 'l_total' else weight)
                terms[name] = value if name not in terms else terms[name] + value
            outputs.append(output.detach() if parts > 1 else output)
        self.output = outputs[0] if parts == 1 else torch.cat(outputs)
        return terms

    def _clip(self, params, norm=None):
        """Clip the gradient of ``params`` to ``train:grad_clip`` (its ``norm`` if known); keep the norm before
        clipping for the log. Nothing without grad_clip."""
        clip = self.train_options.grad_clip
        if clip is None or not params:
            return
        grads = [p.grad for p in params]
        if norm is None or clip.norm_type != 2:
            norm = torch.nn.utils.get_total_norm(grads, float(clip.norm_type))
        torch.nn.utils.clip_grads_with_norm_(params, clip.max_norm, norm)
        self.grad_norm = norm.detach()

    def _update_ema(self, applied=None):
        """BasicSR's EMA update; with ``applied`` (a device flag, 0 for a step the fp16 scaler skipped) the EMA does
        not move on a skipped step, without reading the flag on the host."""
        if self.ema_decay <= 0:
            return
        if applied is None:
            self.model_ema(decay=self.ema_decay)
            return
        net = dict(self.get_bare_model(self.net_g).named_parameters())
        ema = dict(self.net_g_ema.named_parameters())
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.values()), [net[k] for k in ema], applied * (1 - self.ema_decay))

    def _step_is_finite(self, current_iter, finite, params, buffers):
        """Whether this step may be applied: ``finite`` (a device flag: the losses, and the gradient's norm unless the
        fp16 scaler checks it) agreed by every process. With ``check: every_step`` it is read at once (one host sync
        a step); if false, the network's buffers are put back to ``buffers`` and the gradients dropped; then stop with
        :class:`~usaid.errors.NonFiniteLossError`, or, with ``non_finite_loss: action: skip``, log it and return
        False, up to ``max_skips`` times. With ``check: at_log`` the first bad iteration is kept on the device for
        :meth:`check_non_finite`, and the step is applied."""
        if self.train_options.non_finite_loss.check == 'at_log':
            first = self.first_non_finite if self.first_non_finite is not None else torch.zeros(
                (), dtype=torch.int64, device=self.device)
            self.first_non_finite = torch.where(finite | (first > 0), first, current_iter)
            return True
        finite = finite.to(torch.int32)
        if self.opt['dist']:  # DDP's gradients are the same everywhere, the losses are per process
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item():
            return True
        bad_gradient = self.scaler is None and not all(torch.isfinite(p.grad).all() for p in params)
        torch._foreach_copy_(list(self.net_g.buffers()), buffers)
        self.optimizer_g.zero_grad(set_to_none=True)
        self._non_finite(current_iter, bad_gradient, 'the step was not applied')
        return False

    def check_non_finite(self, where):
        """With ``check: at_log``: raise :class:`~usaid.errors.NonFiniteLossError` if a step since the last check was
        not finite (``where``: the iteration of the check). A collective in distributed runs unless ``where`` is a
        save (rank 0 only), which reads this process's flag: the gradient's is every process's."""
        if self.first_non_finite is None:
            return
        first = self.first_non_finite
        if self.opt['dist'] and where != 'save':
            dist.all_reduce(first, op=dist.ReduceOp.MAX)
        first = int(first.item())
        if where != 'save':  # rank 0 alone checks before a save: every process keeps its flag for the next print
            self.first_non_finite = None
        if first:
            self.non_finite_action = 'stop'
            self._non_finite(first, None, f'the run stopped at iteration {where}, with the steps since applied' if
                             where != 'save' else 'found before a checkpoint was written, with the steps since applied')

    def _non_finite(self, current_iter, bad_gradient, what):
        """Log and count a non-finite step of ``current_iter``; skip it or raise NonFiniteLossError."""
        bad = [name for name, value in self.loss_terms.items() if not torch.isfinite(value)]
        if bad_gradient is None:  # check: at_log, found later: this step's values are gone
            cause, values = 'a loss or the gradient was not finite', ''
        else:
            values = ' (' + ', '.join(f'{name} = {value.item():.4g}' for name, value in self.loss_terms.items()) + ')'
            cause = (f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite" if bad else
                     'the gradient is not finite' + ('' if bad_gradient else ' in another process'))
        self.non_finite_skips += 1
        message = f'iteration {current_iter}: {cause}{values}; {what}'
        if self.non_finite_action == 'skip' and self.non_finite_skips <= self.max_non_finite_skips:
            get_root_logger().warning(f'{message}: skipped ({self.non_finite_skips} of at most '
                                      f'{self.max_non_finite_skips}, train:non_finite_loss:max_skips).')
            return
        if self.non_finite_action == 'skip':
            message += f', and {self.max_non_finite_skips} steps were skipped already (train:non_finite_loss:max_skips)'
        checkpoints = saved_networks(self.opt['path'].get('models', ''))
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
        ``losses/l_*`` and ``lr``); with ``grad_clip`` the gradient's norm before clipping (``grad_norm``), with fp16
        the scaler's scale (``grad_scale``: it halves at each step skipped for overflow). With ``non_finite_loss:
        check: at_log`` the steps since the last print are checked here first."""
        self.check_non_finite(self.current_iter)
        log = self.reduce_loss_dict(self.loss_terms)
        log['lr'] = self.get_current_learning_rate()[0]
        if self.grad_norm is not None:
            log['grad_norm'] = self.grad_norm.item()
        if self.scaler is not None:
            log['grad_scale'] = self.scaler.get_scale()
        return log

    def validation(self, dataloader, current_iter, tb_logger, save_img):
        """Every process validates its share of the images. BasicSR's SRModel validates on rank 0 alone while the
        other ranks wait in their next collective, which fails after the process group's timeout (10 minutes with
        NCCL) on a large validation set."""
        self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """SRModel's validation, keeping each image's metrics (for the CSV) instead of only their running sum. Under
        torchrun, image ``i`` is validated (and saved) by rank ``i % world_size``, and rank 0 gathers every image's
        metrics: the averages are those of one process. TensorBoard gets rank 0's first ``tb_images`` images."""
        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.val_options.metrics or {}
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        rows = []
        rank, world_size = self.opt.get('rank', 0), self.opt.get('world_size', 1)
        if world_size > 1:
            dataloader = DataLoader(Subset(dataloader.dataset, range(rank, len(dataloader.dataset), world_size)),
                                    batch_size=1, num_workers=dataloader.num_workers,
                                    pin_memory=dataloader.pin_memory, collate_fn=dataloader.collate_fn)
        self._inference_net = self._build_inference_net()
        try:
            for val_data in tqdm(dataloader, unit='image', disable=not self.val_options.pbar or rank != 0):
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
        if world_size > 1:  # back in image order: rank r validated images r, r + world_size, ...
            shares = [None] * world_size
            dist.all_gather_object(shares, rows)
            rows = [share[i] for i in range(max(map(len, shares))) for share in shares if i < len(share)]

        if metrics_opt:
            self.metric_results = {name: sum(r[name] for r in rows) / len(rows) for name in metrics_opt}
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if not self.opt['is_train'] and rank == 0:
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
        self.check_non_finite('save')
        label = 'latest' if current_iter == -1 else current_iter
        save_format = (self.opt.get('logger') or {}).get('save_format', 'pth')
        path = osp.join(self.opt['path']['models'], f'{net_label}_{label}{SAVE_FORMATS[save_format]}')
        checkpoint = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            check_finite(state, path)
            checkpoint[key] = {k: v.cpu() for k, v in state.items()}
        save_network_file(checkpoint, path, save_format, self.opt.get('network_g'))

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
        # how the sampler split the data, for a resume with another number of processes or batch size
        state['world_size'], state['batch_size'] = sampler_layout(self.opt)
        if self.scaler is not None:  # exact resume of fp16: the scale and its growth count
            state['grad_scaler'] = self.scaler.state_dict()
        save_atomically(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """BasicSR's (optimizers and schedulers), and the fp16 scaler's state when the state has one (a state saved
        without fp16 starts a new scaler)."""
        super().resume_training(resume_state)
        if self.scaler is not None and 'grad_scaler' in resume_state:
            self.scaler.load_state_dict(resume_state['grad_scaler'])
