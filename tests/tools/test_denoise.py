import re
import subprocess
import warnings

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import CHECKPOINTS, KODAK24, console_script, file_size_limit, run, smooth_image
from usaid import api
from usaid.archs import USAID
from usaid.inference import InferenceNetwork
from usaid.denoiser import denoise
from usaid.tools.denoise import main

needs_released = pytest.mark.skipif(not ((CHECKPOINTS / 'USAID.pth').exists() and KODAK24.exists()),
                                    reason='released checkpoints or Kodak24 not found')


def kodak_crop(tmp_path, size=(150, 200)):
    img = cv2.imread(str(sorted(KODAK24.iterdir())[0]))[:size[0], :size[1]]
    cv2.imwrite(str(tmp_path / 'clean.png'), img)
    return tmp_path / 'clean.png'


def psnr(a, b):
    return 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


@needs_released
def test_tiled_output_matches_untiled_and_noise_is_reported(tmp_path):
    clean = kodak_crop(tmp_path)
    denoise_cmd = [console_script('usaid-denoise'), str(clean), '-w', str(CHECKPOINTS / 'USAID.pth'),
                   '--add-noise', '25', '--seed', '0']
    whole = run(denoise_cmd + [str(tmp_path / 'whole.png'), '--tile', '0', '--side-by-side'], cwd=tmp_path)
    run(denoise_cmd + [str(tmp_path / 'tiled.png'), '--tile', '64', '--tile-overlap', '24'], cwd=tmp_path)
    reference, untiled, tiled = (cv2.imread(str(tmp_path / n)) for n in ('clean.png', 'whole.png', 'tiled.png'))
    assert abs(psnr(untiled, reference) - psnr(tiled, reference)) < 0.01
    assert np.abs(untiled.astype(int) - tiled).max() <= 1
    noisy_psnr, denoised_psnr = map(float, re.search(r'noisy ([\d.]+) dB.*denoised ([\d.]+) dB', whole.stdout).groups())
    assert denoised_psnr > noisy_psnr + 5
    assert denoised_psnr == pytest.approx(psnr(untiled, reference), abs=0.01)
    assert cv2.imread(str(tmp_path / 'whole_side_by_side.png')).shape == (150, 400, 3)


def test_tiles_without_enough_overlap_differ_and_with_it_agree():
    torch.manual_seed(0)
    net = USAID(num_feat=8, num_layers=6).eval()  # receptive radius 6
    for bn in net.modules():  # a strong residual, so that a missing context shows
        if isinstance(bn, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(bn.weight)
    image = torch.rand(1, 3, 70, 90)
    whole = denoise(net, image)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # enough overlap: no warning
        assert torch.allclose(denoise(net, image, tile=32, overlap=6), whole, atol=1e-6)
    with pytest.warns(UserWarning, match=r'overlap 2: less than the receptive radius of the network \(6 pixels\)'):
        assert not torch.allclose(denoise(net, image, tile=32, overlap=2), whole, atol=1e-4)


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    net = USAID(num_feat=8, num_layers=3)
    torch.save({'params': net.state_dict()}, tmp_path / 'tiny.pth')
    with open(tmp_path / 'tiny.yml', 'w') as f:
        yaml.safe_dump({'network_g': {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}}, f)
    return ['-w', str(tmp_path / 'tiny.pth'), '-opt', str(tmp_path / 'tiny.yml')]


def test_bit_depth_gray_and_alpha_are_kept_over_a_folder(tmp_path, tiny_weights):
    rng = np.random.default_rng(0)
    photos = tmp_path / 'photos'
    photos.mkdir()
    rgb = smooth_image(rng, 40, 50)
    cv2.imwrite(str(photos / 'eight.png'), rgb)
    cv2.imwrite(str(photos / 'sixteen.png'), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(photos / 'gray.png'), rgb[..., 0])
    alpha = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cv2.imwrite(str(photos / 'rgba.png'), np.dstack([rgb, alpha]))
    cv2.imwrite(str(photos / 'photo.jpg'), rgb)
    result = run([console_script('usaid-denoise'), str(photos), str(tmp_path / 'out')] + tiny_weights, cwd=tmp_path)
    assert '5 image(s) denoised on cpu' in result.stdout
    read = {n: cv2.imread(str(tmp_path / 'out' / f'{n}.png'), cv2.IMREAD_UNCHANGED)
            for n in ('eight', 'sixteen', 'gray', 'rgba', 'photo')}
    assert read['eight'].dtype == np.uint8 and read['eight'].shape == (40, 50, 3)
    assert read['sixteen'].dtype == np.uint16 and len(np.unique(read['sixteen'] % 257)) > 1  # real 16-bit values
    assert read['gray'].shape == (40, 50)
    assert read['rgba'].shape == (40, 50, 4) and np.array_equal(read['rgba'][..., 3], alpha)
    assert read['photo'].shape == (40, 50, 3)


def test_unreadable_input_is_one_clear_error(tmp_path, tiny_weights):
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    result = subprocess.run([console_script('usaid-denoise'), str(tmp_path / 'broken.png'), str(tmp_path / 'o.png')]
                            + tiny_weights, capture_output=True, text=True)
    assert result.returncode == 1 and 'broken.png is not an image file that can be read' in result.stderr
    assert 'Traceback' not in result.stderr and not (tmp_path / 'o.png').exists()


def test_the_network_never_sees_more_than_a_tile_and_its_context_of_a_4000_by_3000_photo(tmp_path, tiny_weights,
                                                                                          monkeypatch):
    """What bounds memory: the network's activations are those of one tile (with its overlap on every side), whatever
    the image size; the image-sized arrays are a few (8-bit input, its float copy, the result). Peak RSS itself
    depends on the allocator and the machine: it is measured in benchmarks/bench.py (d) and docs/tools.md."""
    big = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'big.png'), big)
    seen = []
    forward = InferenceNetwork.forward

    def recording(self, x):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x)
    monkeypatch.setattr(InferenceNetwork, 'forward', recording)
    main([str(tmp_path / 'big.png'), str(tmp_path / 'big_512.png'), '--tile', '512', '--tile-overlap', '32']
         + tiny_weights)
    assert cv2.imread(str(tmp_path / 'big_512.png')).shape == (3000, 4000, 3)
    assert max(h * w for h, w in seen) <= (512 + 2 * 32) ** 2  # one tile with its context, never the photo
    assert len(seen) >= (3000 // 512) * (4000 // 512)  # and every part of the photo went through one


def refused(argv, *expected):
    """Run usaid-denoise in this process; it must stop with one message holding every ``expected`` part."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code)
    assert message.startswith('usaid-denoise: ') and all(part in message for part in expected), message
    return message


def tree(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):
        cv2.imwrite(str(folder / f'{name}.png'), smooth_image(rng, 30, 40))
    return folder


def test_an_output_that_is_the_input_is_refused_unless_overwrite(tmp_path, tiny_weights, photos):
    before = tree(tmp_path)
    photo = str(photos / 'a.png')
    refused([photo, photo] + tiny_weights, f'OUTPUT {photo}: would replace the input {photo}', '--overwrite')
    refused([photo, str(photos)] + tiny_weights, 'would replace the input')  # the folder: photos/a.png again
    refused([str(photos), str(photos)] + tiny_weights, 'is the same path as INPUT', '--overwrite')
    refused([str(photos), str(photos / 'denoised')] + tiny_weights, 'is inside INPUT')
    refused([str(photos), str(tmp_path)] + tiny_weights, 'is a folder containing INPUT')
    (tmp_path / 'link').symlink_to(photos)
    refused([str(photos), str(tmp_path / 'link')] + tiny_weights, 'is the same path as INPUT')  # links resolved
    assert tree(tmp_path) == before

    result = run([console_script('usaid-denoise'), photo, photo, '--overwrite'] + tiny_weights, cwd=tmp_path)
    assert '1 image(s) denoised' in result.stdout
    assert (photos / 'a.png').read_bytes() != before['photos/a.png'] and cv2.imread(photo).shape == (30, 40, 3)
    assert sorted(p.name for p in photos.iterdir()) == ['a.png', 'b.png']  # no temporary file left


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, tiny_weights, photos):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'b.png').write_bytes(b'my own file')
    refused([str(photos), str(tmp_path / 'out')] + tiny_weights, '1 output file(s) exist already', 'b.png')
    assert tree(tmp_path / 'out') == {'b.png': b'my own file'}
    main([str(photos), str(tmp_path / 'out'), '--overwrite'] + tiny_weights)
    assert cv2.imread(str(tmp_path / 'out' / 'b.png')).shape == (30, 40, 3)


def test_inputs_that_would_share_an_output_name_are_refused_before_anything_is_written(tmp_path, tiny_weights,
                                                                                       photos):
    cv2.imwrite(str(photos / 'a.jpg'), cv2.imread(str(photos / 'a.png')))
    refused([str(photos), str(tmp_path / 'out')] + tiny_weights, 'out/a.png from', 'a.jpg and', 'a.png;',
            'nothing was written', 'rename or move')
    refused([str(photos), str(tmp_path / 'out'), '--overwrite'] + tiny_weights, 'several inputs')  # never both
    (photos / 'a.jpg').unlink()
    cv2.imwrite(str(photos / 'b_side_by_side.png'), cv2.imread(str(photos / 'a.png')))
    refused([str(photos), str(tmp_path / 'out'), '--side-by-side'] + tiny_weights, 'out/b_side_by_side.png from')
    assert not (tmp_path / 'out').exists()


def test_exif_orientation_is_applied(tmp_path, tiny_weights):
    """A camera's portrait photo: landscape pixels and EXIF orientation 6 (turn 90 degrees clockwise to view)."""
    pixels = smooth_image(np.random.default_rng(0), 30, 48)
    image = Image.fromarray(pixels[..., ::-1])
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / 'portrait.jpg', exif=exif.tobytes(), quality=95)
    upright = cv2.imread(str(tmp_path / 'portrait.jpg'), cv2.IMREAD_COLOR)  # OpenCV turns it as viewers do
    assert upright.shape == (48, 30, 3)
    cv2.imwrite(str(tmp_path / 'upright.png'), upright)
    main([str(tmp_path / 'portrait.jpg'), str(tmp_path / 'from_jpeg.png')] + tiny_weights)
    main([str(tmp_path / 'upright.png'), str(tmp_path / 'from_png.png')] + tiny_weights)
    assert np.array_equal(cv2.imread(str(tmp_path / 'from_jpeg.png')), cv2.imread(str(tmp_path / 'from_png.png')))
    help_text = subprocess.run([console_script('usaid-denoise'), '--help'], capture_output=True, text=True).stdout
    assert 'EXIF orientation is applied' in ' '.join(help_text.split())


@pytest.mark.parametrize('option, expected', [
    (['--tile', '-5'], '--tile -5: expected 0 (the whole image at once) or a tile size >= 16 pixels; a negative'),
    (['--tile', '3'], '--tile 3: expected 0 (the whole image at once) or a tile size >= 16 pixels; a 3-pixel tile'),
    (['--tile-overlap', '-1'], '--tile-overlap -1: expected an integer >= 0'),
    (['--add-noise', 'nan'], '--add-noise nan: expected a noise level from 0 to 255'),
    (['--add-noise', 'inf'], '--add-noise inf: expected a noise level from 0 to 255'),
    (['--add-noise', '-3'], '--add-noise -3: expected a noise level from 0 to 255'),
    (['--seed', '-1'], '--seed -1: expected an integer from 0 to 4294967295'),
    (['--seed', str(2 ** 32)], f'--seed {2 ** 32}: expected an integer from 0 to 4294967295'),
    (['--threads', '0'], '--threads 0: expected an integer >= 1'),
    (['--device', 'gpu9'], "--device 'gpu9': not a device name; expected auto, cpu, cuda or cuda:N"),
])
def test_invalid_numbers_and_devices_are_refused_up_front(tmp_path, tiny_weights, photos, option, expected):
    refused([str(photos / 'a.png'), str(tmp_path / 'out.png')] + option + tiny_weights, expected)
    assert not (tmp_path / 'out.png').exists()


def test_a_gpu_that_is_not_there_is_named(tmp_path, tiny_weights, photos, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    refused([str(photos / 'a.png'), str(tmp_path / 'o.png'), '--device', 'cuda:3'] + tiny_weights,
            '--device cuda:3: this machine has no GPU that torch can use', 'expected cpu')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    refused([str(photos / 'a.png'), str(tmp_path / 'o.png'), '--device', 'cuda:3'] + tiny_weights,
            '--device cuda:3: this machine has 2 GPU(s), cuda:0 to cuda:1')


def test_the_output_extension_picks_the_format_and_a_lossy_one_is_refused(tmp_path, tiny_weights, photos):
    main([str(photos / 'a.png'), str(tmp_path / 'out.jpg')] + tiny_weights)
    assert (tmp_path / 'out.jpg').is_file() and (tmp_path / 'out.jpg').read_bytes()[:2] == b'\xff\xd8'  # a JPEG
    cv2.imwrite(str(tmp_path / 'deep.png'), cv2.imread(str(photos / 'a.png')).astype(np.uint16) * 257)
    refused([str(tmp_path / 'deep.png'), str(tmp_path / 'deep.jpg')] + tiny_weights,
            'deep.jpg: .jpg cannot hold a 16-bit RGB image without loss', 'expected an output name ending with .png')
    main([str(tmp_path / 'deep.png'), str(tmp_path / 'deep.tif')] + tiny_weights)
    assert cv2.imread(str(tmp_path / 'deep.tif'), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    refused([str(photos / 'a.png'), str(tmp_path / 'out.gif')] + tiny_weights, 'OUTPUT', 'out.gif: usaid-denoise '
            'writes .png, .jpg', 'expected one of these extensions')
    refused([str(photos), str(tmp_path / 'folder.jpg')] + tiny_weights, 'is a folder, so OUTPUT is a folder')
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(('out', 'deep', 'folder'))) == [
        'deep.png', 'deep.tif', 'out.jpg']


@pytest.mark.parametrize('kind', ['gif', 'png', 'webp', 'tif'])
def test_images_of_several_frames_are_refused(tmp_path, tiny_weights, photos, kind):
    frames = [Image.open(photos / 'a.png').convert('RGB'), Image.open(photos / 'b.png').convert('RGB')]
    frames[0].save(photos / f'moving.{kind}', save_all=True, append_images=frames[1:])
    refused([str(photos / f'moving.{kind}'), str(tmp_path / 'o.png')] + tiny_weights,
            f'moving.{kind}: holds 2 frames', 'save the frames as separate images')
    if kind != 'gif':  # a folder is read for its image extensions, .gif is not one
        refused([str(photos), str(tmp_path / 'out')] + tiny_weights, f'moving.{kind}: holds 2 frames')
    assert not (tmp_path / 'o.png').exists() and not (tmp_path / 'out').exists()


def test_an_output_that_cannot_be_written_is_named(tmp_path, tiny_weights, photos):
    (tmp_path / 'notes.txt').write_text('a file, not a folder')
    result = subprocess.run([console_script('usaid-denoise'), str(photos), str(tmp_path / 'notes.txt' / 'out')]
                            + tiny_weights, capture_output=True, text=True)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.strip() == (f'usaid-denoise: OUTPUT {tmp_path}/notes.txt/out: cannot be made, because '
                                     f'{tmp_path}/notes.txt is a file, not a folder; expected a path under a folder.')
    refused([str(photos / 'a.png'), str(tmp_path / 'notes.txt')] + tiny_weights, 'notes.txt: exists and is a file')


def test_a_write_that_fails_half_way_keeps_what_was_written(tmp_path, tiny_weights, photos):
    cv2.imwrite(str(photos / 'c.png'), smooth_image(np.random.default_rng(1), 300, 400))  # too big for the limit
    with file_size_limit(64 * 1024):
        message = refused([str(photos), str(tmp_path / 'out')] + tiny_weights, 'out/c.png: could not be written (File '
                          'too large)', 'the images written before it are kept', '(2 of 3 image(s) written before.)')
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.png', 'b.png'], message  # nothing partial


def test_the_inference_switches_reach_the_network(tmp_path, tiny_weights, photos, monkeypatch):
    made = []

    def recording(net, **options):
        made.append(options)
        return InferenceNetwork(net, **options)

    monkeypatch.setattr(api, 'InferenceNetwork', recording)  # the tool loads the network through the API
    main([str(photos / 'a.png'), str(tmp_path / 'o.png'), '--no-fold-bn', '--no-channels-last', '--conv-algo',
          'direct'] + tiny_weights)
    assert made == [{'fold_bn': False, 'conv_algo': 'direct', 'channels_last': False, 'precision': 'fp32'}]


def test_tiles_follow_the_size_multiple_of_a_network_that_needs_one():
    """A network that unshuffles by 4 (RRDBNet at scale 1): tiles and overlaps that are not multiples of 4 are
    rounded up, so the tiled result equals the untiled one; unaligned pieces would not."""
    from tests.test_inference import Unshuffling
    torch.manual_seed(0)
    net = InferenceNetwork(Unshuffling().eval())
    image = torch.rand(1, 3, 101, 123)
    with torch.inference_mode():
        whole = denoise(net, image, tile=0)
        tiled = denoise(net, image, tile=50, overlap=30)
        unaligned = torch.cat([net(image[..., :, :50]), net(image[..., :, 50:])], dim=-1)
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert not torch.allclose(unaligned, whole, atol=1e-3)  # what the rounding prevents


def test_an_unreadable_image_in_a_folder_is_refused_before_any_result_is_written(tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), smooth_image(np.random.default_rng(0), 20, 24))
    (folder / 'b.png').write_bytes(b'')  # empty
    (folder / 'c.png').write_text('not an image')
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'w.pth')
    (tmp_path / 'net.yml').write_text('network_g: {type: USAID, num_feat: 8, num_layers: 3}\n')
    with pytest.raises(SystemExit) as stop:
        main([str(folder), str(tmp_path / 'out'), '-w', str(tmp_path / 'w.pth'), '-opt', str(tmp_path / 'net.yml')])
    assert '2 of the 3 input image(s) cannot be read' in str(stop.value.code)
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


@pytest.mark.parametrize('argv, message', [(['--device', 'meta'], 'not a device the tools run on'),
                                           (['--threads', '100000'], '--threads 100000: expected at most 1024')])
def test_devices_and_thread_counts_the_tool_cannot_use_are_refused(tmp_path, argv, message):
    cv2.imwrite(str(tmp_path / 'a.png'), smooth_image(np.random.default_rng(0), 20, 24))
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'w.pth')
    (tmp_path / 'net.yml').write_text('network_g: {type: USAID, num_feat: 8, num_layers: 3}\n')
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / 'a.png'), str(tmp_path / 'o.png'), '-w', str(tmp_path / 'w.pth'), '-opt',
              str(tmp_path / 'net.yml')] + argv)
    assert message in str(stop.value.code)


@pytest.mark.parametrize('text, found', [('network_g: {num_feat: 8}\n', "{'num_feat': 8}"), ('name: x\n', 'None')])
def test_an_option_file_whose_network_g_names_no_architecture_is_refused(tmp_path, photos, text, found):
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'w.pth')
    (tmp_path / 'net.yml').write_text(text)
    refused([str(photos / 'a.png'), str(tmp_path / 'o.png'), '-w', str(tmp_path / 'w.pth'), '-opt',
             str(tmp_path / 'net.yml')], f"-opt {tmp_path / 'net.yml'}: network_g: found {found}; expected network_g "
            "options with the architecture's type, e.g. {'type': 'USAID'")
    assert not (tmp_path / 'o.png').exists()
