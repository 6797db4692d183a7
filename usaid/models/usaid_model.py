import csv
import glob
import re
from collections import OrderedDict
from os import path as osp

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
from usaid.checkpoint import check_finite, check_fits, load_checkpoint, network_state, save_atomically
from usaid.errors import NonFiniteLossError
from usaid.inference import InferenceNetwork, check_precision, precision_autocast
from usaid.visual import colour_maps


@MODEL_REGISTRY.register()
class USAIDModel(SRModel):
    """BasicSR's ``SRModel`` trained with a pixel loss plus U-SAID's USA loss, for any ``network_g``.

    Top-level option:
        keep_freed_memory (bool): Keep freed memory in the process for reuse (:mod:`usaid.allocator`): avoids
            page-faulting every large activation in again, measured 20-45 % faster on CPU. Default: True.

    Options under ``train`` (besides BasicSR's ``optim_g``, ``scheduler``, ``ema_decay``, ...):
        pixel_opt (dict): The fidelity loss, e.g. ``BatchSSELoss`` (the authors' ``sum / 2N``) or BasicSR's
            ``MSELoss`` (mean). Required.
        usa_opt (dict, optional): The USA loss (``USALoss``). Without it the model trains with ``pixel_opt`` only,
            the baseline the paper compares against.
        channels_last (bool): Train with channels_last weights and batches (faster convolutions on CPUs and GPUs,
            same maths). Default: True.
        compile (bool): ``torch.compile`` the network (slower to start; measured no faster on CPU). Default: False.
        precision (str): 'fp32', or 'bf16' to run the network under bfloat16 autocast (losses stay float32;
            opt-in, for GPUs and CPUs with bf16 instructions). The USA network has its own ``usa_opt: precision``.
            Default: 'fp32'.
        non_finite_loss (dict): What a NaN or infinite loss (or gradient) does: ``action: stop`` raises
            :class:`~usaid.errors.NonFiniteLossError` naming the iteration and the loss term, before the step is
            applied (no checkpoint is written after it); ``action: skip`` drops that step (weights, optimizer, EMA
            and BatchNorm statistics unchanged) and logs it, at most ``max_skips`` times in a run, then stops.
            Default: ``{action: stop, max_skips: 10}``.

    Options under ``val``:
        tb_images (int): At each validation, TensorBoard gets the noisy input, output and ground truth of this many
            first images, and the USA network's segmentation and uncertainty of the output (when training with
            ``usa_opt``), under ``<dataset>/<image>/<kind>``. Default: 3.
        inference (dict, optional): Keyword arguments of :class:`~usaid.inference.InferenceNetwork`, which
            validation and testing run the network through (``fold_bn``, ``conv_algo``, ``channels_last``,
            ``precision``). Default: its defaults, which keep float32 results.

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

    _inference_net = None  # set for the duration of a validation
    cri_usa = None  # set by init_training_settings when training with usa_opt

    def __init__(self, opt):
        if opt.get('keep_freed_memory', True):
            keep_freed_memory()
        super().__init__(opt)

    def model_to_device(self, net):
        """Weights in channels_last before DDP wraps the network: DDP lays out its gradient buckets as it finds them."""
        if self.is_train and self.opt['train'].get('channels_last', True):
            net = net.to(memory_format=torch.channels_last)
        return super().model_to_device(net)

    def feed_data(self, data):
        super().feed_data(data)
        if self.is_train and self.opt['train'].get('channels_last', True):
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)
            if hasattr(self, 'gt'):
                self.gt = self.gt.contiguous(memory_format=torch.channels_last)

    def init_training_settings(self):
        train_opt = self.opt['train']
        if not train_opt.get('pixel_opt'):
            raise ValueError('USAIDModel: train: pixel_opt is required (e.g. {type: BatchSSELoss, loss_weight: 0.5}).')
        if train_opt.get('perceptual_opt'):
            raise ValueError('USAIDModel: train: perceptual_opt is not supported; use pixel_opt and usa_opt.')
        self.cri_usa = build_loss(train_opt['usa_opt']).to(self.device) if train_opt.get('usa_opt') else None
        self.loss_terms = OrderedDict()
        self.precision = check_precision(train_opt.get('precision', 'fp32'), 'USAIDModel: train: precision')
        non_finite = train_opt.get('non_finite_loss') or {}
        self.non_finite_action = non_finite.get('action', 'stop')
        self.max_non_finite_skips = non_finite.get('max_skips', 10)
        self.non_finite_skips = 0
        super().init_training_settings()
        if train_opt.get('compile', False):
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
        return InferenceNetwork(net, **((self.opt.get('val') or {}).get('inference') or {}))

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
        metrics_opt = self.opt['val'].get('metrics') or {}
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        rows = []
        self._inference_net = self._build_inference_net()
        try:
            for val_data in tqdm(dataloader, unit='image', disable=not self.opt['val'].get('pbar', False)):
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
                if tb_logger is not None and len(rows) <= self.opt['val'].get('tb_images', 3):
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
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')

    def _write_metrics_csv(self, dataset_name, rows):
        path = osp.join(self.opt['path']['results_root'], f'{dataset_name}.csv')
        with open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['image', 'sigma'])
            writer.writeheader()
            writer.writerows(rows)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's ``load_network``, after checking the file: a checkpoint of weights (``weights_only``), with
        ``param_key``, whose keys and shapes fit ``net``; else a :class:`~usaid.errors.CheckpointError` naming them."""
        state = network_state(load_checkpoint(load_path), load_path, param_key)
        check_fits(self.get_bare_model(net), state, load_path, strict)
        super().load_network(net, load_path, strict, param_key)

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
