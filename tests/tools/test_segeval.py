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
from usaid.archs import USAID
from usaid.errors import CheckpointError
from usaid.segmentation import VOC_CLASSES, confusion_matrix, segmentation_scores
from usaid.tools.segeval import SegevalError, build_segnet, main

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


def expected_scores(root, names, transform):
    """Scores computed directly, image by image, of TinySegNet on ``transform(rgb)`` (an 8-bit image)."""
    net = TinySegNet().eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    confusion, psnrs = 0, []
    for name in names:
        rgb = np.asarray(Image.open(root / 'JPEGImages' / f'{name}.jpg').convert('RGB'), dtype=np.float64) / 255.
        label = torch.from_numpy(np.asarray(Image.open(root / 'SegmentationClass' / f'{name}.png'), dtype=np.int64))
        shown = np.round(np.clip(transform(rgb), 0, 1) * 255) / 255
        with torch.no_grad():
            logits = net((torch.from_numpy(shown).permute(2, 0, 1)[None].float() - mean) / std)['out']
        confusion = confusion + confusion_matrix(logits.argmax(1), label, 21)
        psnrs.append(calculate_psnr(shown * 255, np.round(rgb * 255), crop_border=0))
    return segmentation_scores(confusion), float(np.mean(psnrs))


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
    assert f'Download {url} and put it at {tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]}' in str(error.value)


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
