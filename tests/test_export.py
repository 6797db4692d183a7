"""usaid.export: each format is loaded by the program it is for (spandrel, onnxruntime, torch.export, safetensors'
own reader), never by the code under test, and compared with the source network on Kodak images; every architecture
in BasicSR's registry is exported or refused with a reason."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from safetensors import safe_open

from tests.conftest import CHECKPOINTS, KODAK24, option_problems, tiny_options, write_options
from tests.test_basicsr_architectures import ARCHITECTURES, MUST_RESTORE, tiny_network
from usaid.archs import USAID
from usaid.checkpoint import canonical_state_dict
from usaid.data.data_util import add_protocol_noise
from usaid.denoiser import load_denoiser
from usaid.export import export

onnxruntime = pytest.importorskip('onnxruntime')  # the onnx extra, installed by make install
spandrel = pytest.importorskip('spandrel')

SIGMA = 25


def kodak(name, crop=None):
    """A Kodak24 image (RGB, float in [0, 1]) and its noisy version (the test protocol's noise, seed 0)."""
    rgb = cv2.cvtColor(cv2.imread(str(KODAK24 / name)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    if crop:
        rgb = rgb[:crop[0], :crop[1]]
    return rgb, add_protocol_noise(rgb, SIGMA).astype(np.float32)


def to_batch(*images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def psnr(output, clean):
    """PSNR of an N x C x H x W result against the clean image, as usaid-compare scores it (8-bit, RGB)."""
    image = (output[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    return calculate_psnr(image, (clean * 255).round(), 0)


@pytest.fixture(scope='module')
def released():
    return load_denoiser(str(CHECKPOINTS / 'USAID.pth'), param_key=None)


def test_spandrel_loads_the_export_as_kairs_dncnn_and_denoises_kodak_as_we_do(seeded, tmp_path, released):
    out = tmp_path / 'usaid_dncnn.pth'
    report = export('usaid', str(out))
    state = torch.load(out, weights_only=True)
    # KAIR's layout: 20 convolutions at even indices, each with a bias, no BatchNorm left
    assert sorted(state) == sorted(f'model.{2 * i}.{p}' for i in range(20) for p in ('weight', 'bias'))
    descriptor = spandrel.ModelLoader().load_from_file(str(out))
    assert descriptor.architecture.id == 'DnCNN' and descriptor.purpose == 'Restoration'
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (1, 3, 3)
    assert descriptor.tags == ['64nc', '20nb']
    descriptor.eval()
    for name in ('kodim01.png', 'kodim23.png'):
        clean, noisy = kodak(name)
        with torch.inference_mode():
            ours, theirs = released(to_batch(noisy)), descriptor(to_batch(noisy))
        assert psnr(theirs, clean) == pytest.approx(psnr(ours, clean), abs=0.01)
        assert psnr(ours, clean) > 29  # a denoised Kodak image at sigma 25, not two equal failures
    assert 'spandrel' in str(report) and 'PSNR' in str(report)


def test_spandrel_export_refuses_what_spandrel_cannot_represent(tmp_path):
    for network_g, reason in (({'type': 'USAID', 'num_layers': 5}, 'from 8 layers up'),
                              ({'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                                'upscale': 1, 'img_range': 1.0}, 'does not recognise EDSR')):
        weights = tmp_path / f'{network_g["type"]}.pth'
        torch.save({'params': build_network(dict(network_g)).state_dict()}, weights)
        option_file = write_options({'network_g': network_g, 'path': {'pretrain_network_g': str(weights)}},
                                    tmp_path / f'{network_g["type"]}.yml')
        with pytest.raises(ValueError, match=reason) as error:
            export(str(option_file), str(tmp_path / 'out.pth'))
        assert '--format onnx' in str(error.value)
        assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('fp16', [False, True])
def test_onnx_export_runs_in_onnxruntime_on_two_sizes_as_pytorch(seeded, tmp_path, released, fp16):
    out = tmp_path / 'usaid.onnx'
    export('usaid', str(out), fp16=fp16)
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    (graph_input,) = session.get_inputs()
    assert graph_input.type == ('tensor(float16)' if fp16 else 'tensor(float)')
    # batch, height and width are named dimensions (dynamic), channels fixed
    assert [isinstance(d, str) for d in graph_input.shape] == [True, False, True, True]
    full_clean, full_noisy = kodak('kodim05.png')
    crops = [kodak(name, crop=(97, 131)) for name in ('kodim07.png', 'kodim19.png')]
    for batch, cleans in ((to_batch(full_noisy), [full_clean]), (to_batch(*[n for _, n in crops]),
                                                                   [c for c, _ in crops])):
        dtype = np.float16 if fp16 else np.float32
        theirs = torch.from_numpy(session.run(None, {graph_input.name: batch.numpy().astype(dtype)})[0]).float()
        with torch.inference_mode():
            ours = released(batch)
        for i, clean in enumerate(cleans):
            # fp16 is an opt-in with a cost; float32 must match PyTorch
            assert psnr(theirs[i:i + 1], clean) == pytest.approx(psnr(ours[i:i + 1], clean), abs=0.05 if fp16 else 0.01)


def test_pt2_export_loads_back_with_torch_export_load_at_any_size(seeded, tmp_path, released):
    out = tmp_path / 'usaid.pt2'
    export('usaid', str(out))
    program = torch.export.load(str(out))
    module = program.module()
    for shape in ((1, 3, 64, 96), (2, 3, 45, 71), (1, 3, 128, 33)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.inference_mode():
            assert torch.allclose(module(x), released(x), atol=1e-5)


def test_safetensors_export_keeps_params_and_params_ema_apart_and_every_loader_reads_it(tmp_path, image_folder):
    network_g = {'type': 'USAID', 'num_layers': 4, 'num_feat': 8}
    torch.manual_seed(0)
    params, ema = USAID(num_layers=4, num_feat=8).state_dict(), USAID(num_layers=4, num_feat=8).state_dict()
    weights = tmp_path / 'net_g.pth'
    torch.save({'params': params, 'params_ema': ema}, weights)
    option_file = write_options({'network_g': network_g, 'path': {'pretrain_network_g': str(weights)}},
                                tmp_path / 'model.yml')
    out = tmp_path / 'net_g.safetensors'
    export(str(option_file), str(out))
    with safe_open(str(out), 'pt') as f:  # safetensors' own reader: BasicSR's two entries, each under its key
        metadata = f.metadata()
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert metadata['format'] == 'basicsr' and metadata['param_keys'] == 'params,params_ema'
    for key, state in (('params', params), ('params_ema', ema)):
        for name, tensor in state.items():
            assert torch.equal(stored[f'{key}.{name}'], tensor)
    assert len(stored) == len(params) + len(ema)
    # this package's loaders: each entry back on its own, the network built from the metadata alone
    for key, state in (('params', params), ('params_ema', ema)):
        loaded = canonical_state_dict(str(out), key)
        assert all(torch.equal(loaded[name], state[name]) for name in state)
    net = load_denoiser(str(out))  # no network options given: 4 layers, 8 features from the file
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 4
    assert all(torch.equal(net.state_dict()[name], ema[name]) for name in ema)  # BasicSR's rule: params_ema
    # path: pretrain_network_g in an option file: checked, then loaded by the model, each entry as param_key_g says
    opt = tiny_options(image_folder)
    opt['network_g'] = network_g
    opt['path'].update(pretrain_network_g=str(out), param_key_g='params')
    assert option_problems(opt) == []
    opt.update(is_train=False, dist=False, rank=0, world_size=1, num_gpu=0)
    opt['path'].update(visualization=str(tmp_path), results_root=str(tmp_path), log=str(tmp_path))
    model = build_model(opt)
    assert all(torch.equal(model.net_g.state_dict()[name], params[name]) for name in params)


@pytest.mark.parametrize('name', ARCHITECTURES)
def test_every_registered_architecture_exports_or_is_refused_with_a_reason(name, tmp_path):
    network_g = tiny_network(name)
    try:
        net = build_network(dict(network_g)).eval()
    except (TypeError, AttributeError, KeyError):
        pytest.skip(f'{name} needs arguments the tiny set lacks (the option check refuses it: see '
                    'test_basicsr_architectures)')
    weights = tmp_path / 'net.pth'
    torch.save({'params': net.state_dict()}, weights)
    option_file = write_options({'network_g': network_g, 'path': {'pretrain_network_g': str(weights)}},
                                tmp_path / 'model.yml')
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    outcomes = {}
    for extension in ('.safetensors', '.onnx', '.pt2', '.pth'):
        out = tmp_path / f'export{extension}'
        try:
            export(str(option_file), str(out))
        except ValueError as error:
            assert 'expected' in str(error) or 'instead' in str(error), str(error)
            assert not out.exists()
            outcomes[extension] = 'refused'
            continue
        with torch.inference_mode():
            expected = net(x)
            if extension == '.safetensors':
                with safe_open(str(out), 'pt') as f:
                    found = build_network(dict(network_g)).eval()
                    found.load_state_dict({k[len('params.'):]: f.get_tensor(k) for k in f.keys()})
                    found = found(x)
            elif extension == '.onnx':
                session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
                found = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
            elif extension == '.pt2':
                found = torch.export.load(str(out)).module()(x)
            else:
                found = spandrel.ModelLoader().load_from_file(str(out)).eval()(x)
        # as images are written (spandrel clips its outputs to [0, 1] itself)
        assert torch.allclose(found.clamp(0, 1), expected.clamp(0, 1), atol=1e-3), extension
        outcomes[extension] = 'exported'
    if name in MUST_RESTORE:
        assert outcomes['.safetensors'] == 'exported', outcomes
    if name in MUST_RESTORE - {'SwinIR'}:  # convolutional restorers: the ONNX exporter keeps every size dynamic
        assert outcomes['.onnx'] == 'exported', outcomes
    if name in ('USAID', 'EDSR', 'RCAN', 'RIDNet'):  # plain convolutional restorers: torch.export takes them
        assert outcomes['.pt2'] == 'exported', outcomes
