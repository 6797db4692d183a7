"""usaid-segeval end to end on a tiny synthetic VOC-layout dataset with a small random segmentation network."""
import csv
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from basicsr.metrics import calculate_psnr
from PIL import Image
from torch import nn

from tests.conftest import smooth_image
from usaid import evaluation
from usaid.archs import USAID
from usaid.errors import CheckpointError
from usaid.inference import InferenceNetwork
from usaid.segmentation import VOC_CLASSES
from usaid.segeval import SegevalError, build_segnet
from usaid.tools.segeval import main
from usaid.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD

VOC_PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


class TinySegNet(nn.Module):
    """A random two-layer segmentation network with torchvision's output convention (a dict with 'out')."""

    def __init__(self):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, len(VOC_CLASSES), 1))
        torch.random.set_rng_state(generator_state)

    def forward(self, x):
        return {'out': self.body(x)}


@pytest.fixture
def voc(tmp_path):
    """Three images in two sizes, palette label maps with a few classes and a 255 border, a val list."""
    root = tmp_path / 'VOC'
    for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (height, width) in enumerate([(40, 52), (40, 52), (36, 44)]):
        name = f'2007_{i:06d}'
        Image.fromarray(smooth_image(rng, height, width)).save(root / 'JPEGImages' / f'{name}.jpg', quality=95)
        label = np.zeros((height, width), np.uint8)
        label[height // 3:, :width // 2] = 15  # person
        label[:, width // 2:] = 7 + i  # car, cat, chair
        label[0, :] = 255
        image = Image.fromarray(label, mode='P')
        image.putpalette(VOC_PALETTE)
        image.save(root / 'SegmentationClass' / f'{name}.png')
        names.append(name)
    (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n'.join(names) + '\n')
    return root, names


def voc_scores(pairs):
    """PASCAL VOC's scores of (prediction, label) maps, written out in NumPy (not with usaid.segmentation): per class,
    IoU = |predicted c and labelled c| / |predicted c or labelled c| over the dataset's pixels whose label is not 255;
    a class with an empty union has no IoU and is left out of the mean."""
    intersection, union = np.zeros(21), np.zeros(21)
    correct = counted = 0
    for prediction, label in pairs:
        prediction, label = np.asarray(prediction), np.asarray(label)
        valid = label != 255
        for c in range(21):
            intersection[c] += np.sum((prediction == c) & (label == c) & valid)
            union[c] += np.sum(((prediction == c) | (label == c)) & valid)
        correct += np.sum((prediction == label) & valid)
        counted += np.sum(valid)
    iou = [i / u if u else float('nan') for i, u in zip(intersection, union)]
    return {'miou': float(np.nanmean(iou)), 'pixel_accuracy': correct / counted, 'iou': iou}


def expected_scores(root, names, transform):
    """Scores computed directly, image by image, of TinySegNet on ``transform(rgb)`` (an 8-bit image)."""
    net = TinySegNet().eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pairs, psnrs = [], []
    for name in names:
        rgb = np.asarray(Image.open(root / 'JPEGImages' / f'{name}.jpg').convert('RGB'), dtype=np.float64) / 255.
        label = torch.from_numpy(np.asarray(Image.open(root / 'SegmentationClass' / f'{name}.png'), dtype=np.int64))
        shown = np.round(np.clip(transform(rgb), 0, 1) * 255) / 255
        with torch.no_grad():
            logits = net((torch.from_numpy(shown).permute(2, 0, 1)[None].float() - mean) / std)['out']
        pairs.append((logits.argmax(1)[0].numpy(), label.numpy()))
        psnrs.append(calculate_psnr(shown * 255, np.round(rgb * 255), crop_border=0))
    return voc_scores(pairs), float(np.mean(psnrs))


def protocol_noise(sigma):
    def add(rgb):
        np.random.seed(0)  # REFERENCE section 4, literally
        return rgb + np.random.normal(0, sigma / 255., rgb.shape)
    return add


def read_csv(path):
    with open(path) as f:
        return {(row['sigma'], row['method']): row for row in csv.DictReader(f)}


def test_end_to_end_on_a_synthetic_voc_layout(voc, tmp_path, capsys):
    root, names = voc
    torch.manual_seed(0)
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'tiny.pth')
    (tmp_path / 'tiny.yml').write_text(f"network_g: {{type: USAID, num_feat: 8, num_layers: 3}}\n"
                                       f"path: {{pretrain_network_g: {tmp_path / 'tiny.pth'}}}\n")
    for batch_size, out in ((2, 'batched'), (1, 'single')):
        main(['--voc', str(root), '-w', f'tiny={tmp_path / "tiny.yml"}', '-s', '15', '50', '--segnet',
              'tests.tools.test_segeval:TinySegNet', '--batch-size', str(batch_size), '-o', str(tmp_path / out)])
    rows = read_csv(tmp_path / 'batched' / 'segeval.csv')
    assert set(rows) == {('', 'clean'), ('15', 'noisy'), ('15', 'tiny'), ('50', 'noisy'), ('50', 'tiny')}
    assert rows == read_csv(tmp_path / 'single' / 'segeval.csv')  # batching equal sizes changes nothing

    clean, _ = expected_scores(root, names, lambda rgb: rgb)
    assert float(rows[('', 'clean')]['miou']) == pytest.approx(clean['miou'], abs=1e-12)
    for sigma in (15, 50):
        noisy, noisy_psnr = expected_scores(root, names, protocol_noise(sigma))
        row = rows[(str(sigma), 'noisy')]
        assert float(row['miou']) == pytest.approx(noisy['miou'], abs=1e-12)
        assert float(row['pixel_accuracy']) == pytest.approx(noisy['pixel_accuracy'], abs=1e-12)
        assert float(row['psnr']) == pytest.approx(noisy_psnr, abs=1e-9)
        assert [float(row[f'iou_{c}']) for c in ('background', 'car', 'person')] == pytest.approx(
            [noisy['iou'][0], noisy['iou'][7], noisy['iou'][15]], abs=1e-12, nan_ok=True)
    # every class: absent ones (neither in the truth nor predicted) are empty in the CSV's numbers as NaN
    assert [float(rows[('', 'clean')][f'iou_{c}']) for c in VOC_CLASSES] == pytest.approx(clean['iou'], nan_ok=True)
    assert any(np.isnan(v) for v in clean['iou'])
    table = (tmp_path / 'batched' / 'segeval.md').read_text()
    assert '| - | clean |' in table and '| 50 | tiny |' in table and 'tvmonitor' in table
    assert '3 images' in capsys.readouterr().out


def test_offline_without_weights_says_which_file_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    url = torchvision.models.get_model_weights('fcn_resnet50').DEFAULT.url
    with pytest.raises(SegevalError) as error:
        build_segnet('fcn_resnet50')
    place = tmp_path / 'hub' / 'checkpoints' / url.rsplit('/', 1)[1]
    assert f'Download {url} and put it at {place}' in str(error.value)


def test_torchvision_networks_load_local_weights_and_refuse_wrong_ones(tmp_path):
    net = torchvision.models.get_model('lraspp_mobilenet_v3_large', weights=None, weights_backbone=None,
                                       num_classes=21)
    torch.save(net.state_dict(), tmp_path / 'lraspp.pth')
    loaded = build_segnet('lraspp_mobilenet_v3_large', str(tmp_path / 'lraspp.pth'))
    assert not loaded.training and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                           net.state_dict().values()))
    torch.save(USAID(num_feat=8, num_layers=3).state_dict(), tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match='other.pth: does not fit the network LRASPP'):
        build_segnet('lraspp_mobilenet_v3_large', str(tmp_path / 'other.pth'))
    with pytest.raises(SegevalError, match='expected one of deeplabv3_resnet50'):
        build_segnet('unet')


def test_bad_data_is_named(voc, tmp_path):
    root, names = voc
    label = root / 'SegmentationClass' / f'{names[2]}.png'
    Image.open(label).resize((10, 10)).save(label)
    with pytest.raises(SystemExit, match=f'{label}: 10x10, but .*{names[2]}.jpg is 36x44; expected the same size'):
        main(['--voc', str(root), '--segnet', 'tests.tools.test_segeval:TinySegNet', '-o', str(tmp_path / 'out')])
    (root / 'ImageSets' / 'Segmentation' / 'val.txt').unlink()
    with pytest.raises(SystemExit, match='val.txt does not exist; expected a VOC layout'):
        main(['--voc', str(root), '--segnet', 'tests.tools.test_segeval:TinySegNet'])


class SegNetOf(nn.Module):
    """A random segmentation network scoring ``classes`` classes, at the input's resolution divided by ``stride``."""

    def __init__(self, classes=len(VOC_CLASSES), stride=1):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(3)
        self.stride = stride
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))
        torch.random.set_rng_state(generator_state)

    def forward(self, x):
        return {'out': self.body(nn.functional.avg_pool2d(x, self.stride, ceil_mode=True))}


def ade_segnet():
    return SegNetOf(150)  # ADE20K's classes


def ten_class_segnet():
    return SegNetOf(10)


def stride_two_segnet():
    return SegNetOf(stride=2)


def segeval_refused(argv, expected):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert str(stop.value.code) == f'usaid-segeval: {expected}'


@pytest.mark.parametrize('factory, classes', [('ade_segnet', 150), ('ten_class_segnet', 10)])
def test_a_network_of_other_classes_is_refused_with_the_numbers(voc, tmp_path, factory, classes):
    root, _ = voc
    segeval_refused(['--voc', str(root), '--segnet', f'tests.tools.test_segeval:{factory}', '-s', '25',
                     '-o', str(tmp_path / 'out')],
                    f"--segnet: scores {classes} classes per pixel, but the labels are VOC's 21 classes (0-20; these "
                    'images use classes up to 15); expected a network of 21 classes (VOC-label weights): the class '
                    "indices of another label set do not mean VOC's classes.")
    assert not (tmp_path / 'out').exists()


def test_scores_at_a_lower_resolution_are_upsampled_to_the_labels(voc, tmp_path):
    root, names = voc
    main(['--voc', str(root), '--segnet', 'tests.tools.test_segeval:stride_two_segnet', '-s', '25',
          '-o', str(tmp_path / 'out')])
    net = stride_two_segnet().eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pairs = []
    for name in names:
        rgb = np.asarray(Image.open(root / 'JPEGImages' / f'{name}.jpg').convert('RGB'), dtype=np.float64) / 255.
        label = np.asarray(Image.open(root / 'SegmentationClass' / f'{name}.png'), dtype=np.int64)
        with torch.no_grad():
            scores = net((torch.from_numpy(rgb).permute(2, 0, 1)[None].float() - mean) / std)['out']
        assert scores.shape[-2:] == tuple((s + 1) // 2 for s in label.shape)
        scores = nn.functional.interpolate(scores, size=label.shape, mode='bilinear', align_corners=False)
        pairs.append((scores.argmax(1)[0].numpy(), label))
    row = read_csv(tmp_path / 'out' / 'segeval.csv')[('', 'clean')]
    assert float(row['miou']) == pytest.approx(voc_scores(pairs)['miou'], abs=1e-12)


def test_labels_outside_the_voc_classes_are_refused(voc, tmp_path):
    root, names = voc
    label_path = root / 'SegmentationClass' / f'{names[1]}.png'
    label = np.asarray(Image.open(label_path)).copy()
    label[5:8, 5:8] = 37
    image = Image.fromarray(label, mode='P')
    image.putpalette(VOC_PALETTE)
    image.save(label_path)
    segeval_refused(['--voc', str(root), '--segnet', 'tests.tools.test_segeval:TinySegNet', '-s', '25',
                     '-o', str(tmp_path / 'out')],
                    f"{label_path}: holds class index(es) 37, outside VOC's 0-20 (255 is ignored); expected a VOC "
                    'label map (SegmentationClass, not SegmentationObject).')


@pytest.mark.parametrize('option, expected', [
    (['-s', 'nan'], '--sigma nan: expected a noise level from 0 to 255 (0-255 scale), e.g. 25.'),
    (['--batch-size', '0'], '--batch-size 0: expected an integer >= 1.'),
    (['--limit', '-2'], '--limit -2: expected an integer >= 1.'),
    (['--device', 'cuda:3'], '--device cuda:3: this machine has no GPU that torch can use '
                             '(torch.cuda.device_count() is 0); expected cpu (or auto).'),
    (['-w', 'a=x.pth', '-w', 'a=y.pth'], "--model 'a=y.pth': a second model named 'a', and the results tell models by "
                                         'their name; expected a distinct NAME for each model.'),
])
def test_bad_options_are_refused_before_anything_runs(voc, tmp_path, monkeypatch, option, expected):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'x.pth')
    monkeypatch.chdir(tmp_path)
    segeval_refused(['--voc', str(voc[0]), '--segnet', 'tests.tools.test_segeval:TinySegNet', '-o',
                     str(tmp_path / 'out')] + option, expected)


def test_an_output_folder_that_cannot_be_made_is_found_first(voc, tmp_path):
    (tmp_path / 'file').write_text('not a folder')
    segeval_refused(['--voc', str(voc[0]), '--segnet', 'tests.tools.test_segeval:TinySegNet', '-s', '25',
                     '-o', str(tmp_path / 'file' / 'out')],
                    f'--output {tmp_path}/file/out: cannot be made, because {tmp_path}/file is a file, not a folder; '
                    'expected a path under a folder.')


def test_the_inference_switches_reach_the_denoisers(voc, tmp_path, monkeypatch):
    made = []

    def recording(net, **options):
        made.append(options)
        return InferenceNetwork(net, **options)

    monkeypatch.setattr(evaluation, 'InferenceNetwork', recording)
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'tiny.pth')
    (tmp_path / 'tiny.yml').write_text(f"network_g: {{type: USAID, num_feat: 8, num_layers: 3}}\n"
                                       f"path: {{pretrain_network_g: {tmp_path / 'tiny.pth'}}}\n")
    main(['--voc', str(voc[0]), '-w', f'tiny={tmp_path / "tiny.yml"}', '-s', '25', '--segnet',
          'tests.tools.test_segeval:TinySegNet', '-o', str(tmp_path / 'out'), '--no-fold-bn', '--precision', 'bf16'])
    assert made == [{'fold_bn': False, 'conv_algo': 'auto', 'channels_last': True, 'precision': 'bf16'}]


def per_image_miou(root, name, transform):
    """One image's mIoU written out with NumPy (not the package's functions): over the classes in its labels or its
    prediction, pixels labelled 255 left out."""
    net = TinySegNet().eval()
    rgb = np.asarray(Image.open(root / 'JPEGImages' / f'{name}.jpg').convert('RGB'), dtype=np.float64) / 255.
    label = np.asarray(Image.open(root / 'SegmentationClass' / f'{name}.png'), dtype=np.int64)
    shown = np.round(np.clip(transform(rgb), 0, 1) * 255) / 255
    normalized = (shown - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    with torch.no_grad():
        prediction = net(torch.from_numpy(normalized).permute(2, 0, 1)[None].float())['out'].argmax(1)[0].numpy()
    valid = label != 255
    classes = np.union1d(np.unique(label[valid]), np.unique(prediction[valid]))
    ious = [np.sum((prediction == c) & (label == c) & valid) / np.sum(((prediction == c) | (label == c)) & valid)
            for c in classes]
    return float(np.mean(ious)), float(np.mean(prediction[valid] == label[valid]))


def test_a_baseline_gives_per_image_scores_and_scipys_paired_statistics(voc, tmp_path):
    from scipy import stats
    root, names = voc
    torch.manual_seed(0)
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / 'tiny.pth')
    (tmp_path / 'tiny.yml').write_text(f"network_g: {{type: USAID, num_feat: 8, num_layers: 3}}\n"
                                       f"path: {{pretrain_network_g: {tmp_path / 'tiny.pth'}}}\n")
    main(['--voc', str(root), '-w', f'tiny={tmp_path / "tiny.yml"}', '-s', '50', '--segnet',
          'tests.tools.test_segeval:TinySegNet', '--baseline', 'noisy', '-o', str(tmp_path / 'out')])
    with open(tmp_path / 'out' / 'segeval_images.csv') as f:
        images = list(csv.DictReader(f))
    noisy = {row['image']: row for row in images if row['method'] == 'noisy'}
    for name in names:
        miou, accuracy = per_image_miou(root, name, protocol_noise(50))
        assert float(noisy[name]['miou']) == pytest.approx(miou, abs=1e-12)
        assert float(noisy[name]['pixel_accuracy']) == pytest.approx(accuracy, abs=1e-12)
    tiny = {row['image']: row for row in images if row['method'] == 'tiny'}
    with open(tmp_path / 'out' / 'segeval_paired.csv') as f:
        paired = {row['metric']: row for row in csv.DictReader(f)}
    assert set(paired) == {'miou', 'pixel_accuracy', 'psnr'}
    for metric, row in paired.items():
        differences = np.array([float(tiny[n][metric]) - float(noisy[n][metric]) for n in names])
        assert float(row['mean_difference']) == pytest.approx(differences.mean())
        if np.any(differences != 0):
            assert float(row['wilcoxon_p']) == pytest.approx(stats.wilcoxon(differences).pvalue)
        assert row['method'] == 'tiny' and row['baseline'] == 'noisy' and int(row['images']) == 3
    assert 'Paired with noisy' in (tmp_path / 'out' / 'segeval.md').read_text()
    with pytest.raises(SystemExit, match='--baseline nobody: not one of the methods'):
        main(['--voc', str(root), '-s', '50', '--segnet', 'tests.tools.test_segeval:TinySegNet', '--baseline',
              'nobody', '-o', str(tmp_path / 'out2')])


def test_an_image_without_labelled_pixels_has_no_per_image_score(voc, tmp_path):
    root, names = voc
    label = Image.open(root / 'SegmentationClass' / f'{names[0]}.png')
    blank = Image.fromarray(np.full(np.asarray(label).shape, 255, np.uint8), mode='P')
    blank.putpalette(VOC_PALETTE)
    blank.save(root / 'SegmentationClass' / f'{names[0]}.png')
    main(['--voc', str(root), '-s', '25', '--segnet', 'tests.tools.test_segeval:TinySegNet', '-o', str(tmp_path / 'o')])
    with open(tmp_path / 'o' / 'segeval_images.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['image'] == names[0]]
    assert rows and all(np.isnan(float(r['pixel_accuracy'])) and np.isnan(float(r['miou'])) for r in rows)
