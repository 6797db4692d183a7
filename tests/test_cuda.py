"""On a GPU, training, resume, inference, distributed runs and the tools give the CPU's results (``make gpu-check``).

Every test here is marked ``cuda`` and skips, saying why, where torch sees no GPU (tests/conftest.py). Tolerances:
float32 with TF32 off (cuDNN and cuBLAS) differs from the CPU only by the order of sums (a relative 1e-4 on losses,
1e-3 of the largest gradient); bf16 is held to the CPU bf16 test's bounds (losses within 5 %). Runs that go through
BasicSR's pipeline keep its cuDNN benchmark (algorithms chosen by timing, so not bit-reproducible): their weights
are compared with a bound that Adam's sign-like first steps respect (:func:`assert_trained_alike`).
"""
import copy
import csv
import re

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import CHECKPOINTS, KODAK24, console_script, run, smooth_image, tiny_options, write_options
from tests.models.test_usaid_model import batch, build, one_step
from tests.test_inference import trained_like_denoiser
from tests.tools.test_compare import TINY_USAID, model_file
from usaid import compat
from usaid.inference import InferenceNetwork

pytestmark = pytest.mark.cuda
GPU = torch.device('cuda', 0)
needs_released = pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                                    reason='released checkpoints or Kodak24 not found')


@pytest.fixture
def no_tf32():
    """float32 convolutions and matrix products in float32, as on the CPU (torch allows TF32 convolutions by
    default on Ampere and newer GPUs, a 10-bit mantissa)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on_gpu(opt):
    opt = copy.deepcopy(opt)
    opt['num_gpu'] = 1
    return opt


def flat_grad(model):
    return torch.cat([p.grad.detach().float().cpu().flatten() for p in model.net_g.parameters()])


# ---- training steps ----------------------------------------------------------------------------------------------

def test_an_fp32_training_step_on_the_gpu_gives_the_cpu_loss_gradient_and_weights(image_folder, tmp_path, no_tf32):
    # MSE only: the USA term's arg-max labels may flip where the random head's logits tie (see test_usaid_model);
    # SGD: the update is -lr x gradient, so the weights after the step compare as tightly as the gradients
    lr = 1e-4
    opt = tiny_options(image_folder, usa=False)
    opt['train']['optim_g'] = {'type': 'SGD', 'lr': lr}
    data = batch(image_folder)
    cpu = one_step(opt, tmp_path, data)
    gpu = one_step(on_gpu(opt), tmp_path, data)
    assert gpu.device.type == 'cuda' and gpu.output.device.type == 'cuda'
    assert all(p.is_cuda for p in gpu.net_g.parameters())
    assert torch.allclose(gpu.loss_terms['l_total'].cpu(), cpu.loss_terms['l_total'], rtol=1e-4)
    for a, b in zip(gpu.net_g.parameters(), cpu.net_g.parameters()):
        assert (a.grad.cpu() - b.grad).abs().max() <= 1e-3 * b.grad.abs().max()
        # the same initial weights, moved by lr x gradient: apart by at most lr x the gradients' difference
        assert (a.detach().cpu() - b.detach()).abs().max() <= lr * 1e-3 * b.grad.abs().max() + 1e-7
    for (name, a), b in zip(gpu.net_g.named_buffers(), cpu.net_g.buffers()):  # BatchNorm statistics of the batch
        assert torch.allclose(a.cpu().float(), b.float(), rtol=1e-4, atol=1e-6), name


def test_a_bf16_training_step_on_the_gpu_stays_close_to_the_fp32_cpu_step(image_folder, tmp_path):
    data = batch(image_folder)
    opt = tiny_options(image_folder)
    fp32_cpu = one_step(opt, tmp_path, data)
    opt['train']['precision'] = opt['train']['usa_opt']['precision'] = 'bf16'
    bf16_gpu = one_step(on_gpu(opt), tmp_path, data)
    assert bf16_gpu.output.dtype == torch.float32 and bf16_gpu.output.is_cuda
    for name in ('l_pix', 'l_usa'):
        value = bf16_gpu.loss_terms[name].cpu()
        assert torch.isfinite(value) and torch.allclose(value, fp32_cpu.loss_terms[name], rtol=0.05), name
    # gradients of the MSE-only step: bf16 rounding flips the USA term's arg-max labels where the random head's logits
    # are close, which turns its gradient (on the CPU in bf16: cosine 0.48 with the USA term, 0.999 without)
    mse_only = tiny_options(image_folder, usa=False)
    fp32_cpu = one_step(mse_only, tmp_path, data)
    mse_only['train']['precision'] = 'bf16'
    bf16_gpu = one_step(on_gpu(mse_only), tmp_path, data)
    cosine = torch.nn.functional.cosine_similarity(flat_grad(bf16_gpu), flat_grad(fp32_cpu), dim=0)
    assert cosine > 0.99, cosine


def test_a_channels_last_step_on_the_gpu_matches_the_nchw_step(image_folder, tmp_path, no_tf32):
    opt = on_gpu(tiny_options(image_folder, usa=False))
    data = batch(image_folder)
    opt['train']['channels_last'] = True
    fast = one_step(opt, tmp_path, data)
    opt['train']['channels_last'] = False
    plain = one_step(opt, tmp_path, data)
    assert fast.net_g.dncnn[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.lq.is_cuda and fast.lq.is_contiguous(memory_format=torch.channels_last)
    assert plain.net_g.dncnn[0].weight.is_contiguous()
    assert torch.allclose(fast.loss_terms['l_total'], plain.loss_terms['l_total'], rtol=1e-4)
    for a, b in zip(fast.net_g.parameters(), plain.net_g.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-3 * b.grad.abs().max()


def test_a_run_resumed_onto_the_gpu_keeps_adams_moments_there_its_step_count_on_the_cpu_and_trains_on(
        image_folder, tmp_path):
    """As BasicSR's train_pipeline resumes: the latest state of training_states (compat.load_resume_state), a model
    built from the networks of its iteration, then ``resume_training``."""
    opt = on_gpu(tiny_options(image_folder, usa=False))
    opt['train']['ema_decay'] = 0
    data = batch(image_folder)
    torch.manual_seed(0)
    trained = build(opt, tmp_path)
    for current_iter in (1, 2):
        trained.feed_data(data)
        trained.optimize_parameters(current_iter)
    trained.save_network(trained.net_g, 'net_g', 2)
    trained.save_training_state(0, 2)

    resume_opt = copy.deepcopy(opt)
    resume_opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=True)
    resume_opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path))
    state = compat.load_resume_state(resume_opt)
    assert state['iter'] == 2 and resume_opt['path']['pretrain_network_g'] == str(tmp_path / 'net_g_2.pth')
    resumed = build(resume_opt, tmp_path)
    resumed.resume_training(state)

    for p, q in zip(resumed.net_g.parameters(), trained.net_g.parameters()):
        assert p.is_cuda and torch.equal(p, q)
        ours, theirs = resumed.optimizer_g.state[p], trained.optimizer_g.state[q]
        assert ours['exp_avg'].device == ours['exp_avg_sq'].device == p.device
        # Adam (neither capturable nor fused) counts its steps in a CPU tensor; one on the GPU would cost a sync
        assert ours['step'].device.type == 'cpu' and float(ours['step']) == 2
        assert torch.equal(ours['exp_avg'], theirs['exp_avg']) and torch.equal(ours['exp_avg_sq'], theirs['exp_avg_sq'])
    for model in (trained, resumed):
        model.feed_data(data)
        model.optimize_parameters(3)
    for p, q in zip(resumed.net_g.parameters(), trained.net_g.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)


# ---- inference ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('options', [{}, {'channels_last': False}, {'fold_bn': False}])
def test_the_inference_network_on_the_gpu_computes_the_cpu_function(options, no_tf32):
    net = trained_like_denoiser()
    image = torch.rand(2, 3, 37, 53)
    with torch.inference_mode():
        expected = net(image)
        fast = InferenceNetwork(copy.deepcopy(net).to(GPU), **options)
        result = fast(image.to(GPU))
    assert fast.conv_algo == 'direct' and result.is_cuda and result.dtype == torch.float32 and result.is_contiguous()
    assert torch.allclose(result.cpu(), expected, atol=2e-5), (result.cpu() - expected).abs().max()


def test_channels_last_inference_on_the_gpu_equals_contiguous(no_tf32):
    net = trained_like_denoiser().to(GPU)
    image = torch.rand(1, 3, 64, 80, device=GPU)
    with torch.inference_mode():
        fast = InferenceNetwork(net, channels_last=True)(image)
        plain = InferenceNetwork(net, channels_last=False)(image)
    assert fast.is_contiguous() and torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()


# ---- BasicSR's pipeline under torchrun with NCCL -----------------------------------------------------------------

def assert_trained_alike(path, reference, steps, lr=1e-3):
    """The weights of two runs of ``steps`` Adam steps that differ only by float rounding: Adam moves a weight by about
    ``lr`` per step whatever its gradient's size, so where a gradient is near zero the rounding can flip its sign; a
    few weights may then differ by up to 2 x lr a step, all others agree to 1e-5."""
    ours = torch.load(path, weights_only=True)['params']
    theirs = torch.load(reference, weights_only=True)['params']
    assert ours.keys() == theirs.keys()
    differences = torch.cat([(ours[k].float() - theirs[k].float()).abs().flatten() for k in ours])
    assert differences.max() <= 2 * lr * steps, differences.max()
    assert (differences > 1e-5).float().mean() < 0.01, (differences > 1e-5).float().mean()
    assert all(torch.isfinite(value).all() for value in ours.values())


def train(image_folder, tmp_path, name, processes=None, backend='nccl'):
    """4 iterations of the tiny U-SAID run: on the GPU (``num_gpu: 1`` per process) or, with gloo, on the CPU with no
    GPU visible; under torchrun with ``processes`` processes, else by usaid-train. Returns the log and the weights."""
    opt = tiny_options(image_folder, name=name)
    opt['num_gpu'] = 1 if backend == 'nccl' else 0
    env = {} if backend == 'nccl' else {'CUDA_VISIBLE_DEVICES': ''}
    if processes:
        opt['dist_params'] = {'backend': backend}  # refused if that backend cannot run: NCCL really is used
        command = [console_script('torchrun'), '--standalone', f'--nproc_per_node={processes}', '-m', 'usaid.train']
        launcher = ['--launcher', 'pytorch']
    else:
        command, launcher = [console_script('usaid-train')], []
    result = run(command + ['-opt', str(write_options(opt, tmp_path / f'{name}.yml'))] + launcher, cwd=tmp_path,
                 env=env)
    assert 'Traceback' not in result.stderr
    experiment = tmp_path / 'experiments' / name
    log = next(experiment.glob(f'train_{name}_*.log')).read_text()
    assert (experiment / 'training_states' / '4.state').exists()
    return log, experiment / 'models' / 'net_g_4.pth'


def test_a_one_process_nccl_run_trains_as_a_plain_gpu_run(image_folder, tmp_path):
    log, weights = train(image_folder, tmp_path, 'nccl1', processes=1)
    assert re.search(r'^\s*dist: True$', log, re.M) and 'World size (gpu number): 1' in log
    assert log.count('Validation tiny_val') == 3
    _, plain = train(image_folder, tmp_path, 'plain_gpu')
    assert_trained_alike(weights, plain, steps=4)


@pytest.mark.cuda(gpus=2)
def test_a_two_process_nccl_run_trains_as_the_two_process_cpu_run(image_folder, tmp_path):
    log, weights = train(image_folder, tmp_path, 'nccl2', processes=2)
    assert 'World size (gpu number): 2' in log and log.count('Validation tiny_val') == 3
    _, gloo = train(image_folder, tmp_path, 'gloo2', processes=2, backend='gloo')
    assert_trained_alike(weights, gloo, steps=4)


# ---- the tools ---------------------------------------------------------------------------------------------------

def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


@needs_released
def test_usaid_denoise_on_the_gpu_gives_the_cpu_psnr(tmp_path):
    clean = cv2.imread(str(sorted(KODAK24.iterdir())[0]))[:256, :384]
    cv2.imwrite(str(tmp_path / 'clean.png'), clean)
    command = [console_script('usaid-denoise'), str(tmp_path / 'clean.png'), '-w', str(CHECKPOINTS / 'USAID.pth'),
               '--add-noise', '25', '--seed', '0', '--tile', '128']
    outputs = {}
    for device, precision in (('cpu', 'fp32'), ('cuda', 'fp32'), ('cuda', 'bf16')):
        out = tmp_path / f'{device}_{precision}.png'
        result = run(command + [str(out), '--device', device, '--precision', precision], cwd=tmp_path)
        assert re.search(rf'denoised on {device}(:0)? \({precision}', result.stdout), result.stdout
        outputs[device, precision] = psnr(cv2.imread(str(out)), clean)
    assert abs(outputs['cuda', 'fp32'] - outputs['cpu', 'fp32']) < 0.01, outputs
    assert outputs['cuda', 'fp32'] - outputs['cuda', 'bf16'] < 0.25, outputs  # the CPU's bf16 bound (test_inference)


def test_usaid_compare_on_the_gpu_gives_the_cpus_table(tmp_path, monkeypatch):
    from usaid import comparison
    from usaid.tools.compare import main

    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f'p{i}.png'), smooth_image(np.random.default_rng(i), 96, 128))
    models = {'a': model_file(tmp_path, 'a', TINY_USAID, 0), 'b': model_file(tmp_path, 'b', TINY_USAID, 1)}
    arguments = [f'--model={name}={spec}' for name, spec in models.items()]
    arguments += ['-d', str(folder), '-s', '15', '50', '--niqe', 'off', '--lpips', 'off', '--no-cache', '-o']
    run([console_script('usaid-compare')] + arguments + [str(tmp_path / 'cpu')], cwd=tmp_path,
        env={'CUDA_VISIBLE_DEVICES': ''})  # the reference: no GPU visible
    devices = []

    def build_model(opt):
        model = build_gpu_model(opt)
        devices.append(model.device.type)
        return model
    build_gpu_model = comparison.build_model
    monkeypatch.setattr(comparison, 'build_model', build_model)
    monkeypatch.chdir(tmp_path)
    main(arguments + [str(tmp_path / 'gpu')])
    assert devices == ['cuda'] * 4  # two models at two noise levels, each on the GPU

    def rows(run_):
        with open(tmp_path / run_ / 'compare.csv') as f:
            return {(r['model'], r['dataset'], r['sigma'], r['metric']): float(r['value']) for r in csv.DictReader(f)}
    cpu, gpu = rows('cpu'), rows('gpu')
    assert cpu.keys() == gpu.keys() and {key[3] for key in cpu} == {'psnr', 'ssim'}
    for key, value in cpu.items():
        assert gpu[key] == pytest.approx(value, abs=0.01 if key[3] == 'psnr' else 1e-4), key
