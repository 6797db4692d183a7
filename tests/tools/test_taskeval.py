"""usaid-taskeval on a synthetic ImageFolder with a small random classifier, against a direct computation written
out with NumPy (the protocol's noise, 8-bit rounding, ImageNet normalisation, top-k by sorting)."""
import csv

import cv2
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from tests.conftest import smooth_image
from usaid.archs import USAID
from usaid.taskeval import Classifier
from usaid.tools.taskeval import main

CLASSES = 7  # more than 5: top-5 differs from top-1 and from "always"


class TinyClassifier(nn.Module):
    """A random convolutional classifier of any input size (global pooling), seeded."""

    def __init__(self):
        super().__init__()
        state = torch.random.get_rng_state()
        torch.manual_seed(5)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(16, CLASSES)
        torch.random.set_rng_state(state)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TupleClassifier(TinyClassifier):
    def forward(self, x):
        return super().forward(x), None


class FailingClassifier(TinyClassifier):
    def forward(self, x):
        raise RuntimeError('broken')


class NaNClassifier(TinyClassifier):
    def forward(self, x):
        return super().forward(x) * float('nan')


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder: CLASSES classes, 2 images each, of two sizes."""
    root = tmp_path / 'images'
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f'class{c}').mkdir(parents=True)
        for i, (height, width) in enumerate([(32, 40), (28, 36)]):
            cv2.imwrite(str(root / f'class{c}' / f'img{i}.png'), smooth_image(rng, height, width))
    return root


def direct_hits(root, sigma, denoiser=None):
    """Each image's (top-1 hit, top-5 hit), computed without the package's evaluation code."""
    net = TinyClassifier().eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    hits = {}
    for c in range(CLASSES):
        for path in sorted((root / f'class{c}').iterdir()):
            rgb = cv2.imread(str(path))[..., ::-1].astype(np.float64) / 255.
            if sigma is not None:
                np.random.seed(0)
                rgb = rgb + np.random.normal(0, sigma / 255., rgb.shape)
                if denoiser is not None:
                    with torch.no_grad():
                        rgb = denoiser(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0)
                    rgb = rgb.numpy().astype(np.float64)
            shown = np.round(np.clip(rgb, 0, 1) * 255) / 255
            with torch.no_grad():
                scores = net(torch.from_numpy((shown - mean) / std).permute(2, 0, 1)[None].float())[0].numpy()
            order = np.argsort(-scores)
            hits[f'class{c}/{path.name}'] = (int(order[0] == c), int(c in order[:5]))
    return hits


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_accuracies_per_image_class_and_overall_match_a_direct_computation(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    denoiser = USAID(num_feat=8, num_layers=3).eval()
    torch.save({'params': denoiser.state_dict()}, tmp_path / 'tiny.pth')
    (tmp_path / 'tiny.yml').write_text(f"network_g: {{type: USAID, num_feat: 8, num_layers: 3}}\n"
                                       f"path: {{pretrain_network_g: {tmp_path / 'tiny.pth'}}}\n")
    main(['--images', str(folder), '-w', f'tiny={tmp_path / "tiny.yml"}', '-s', '50', '--classifier',
          'tests.tools.test_taskeval:TinyClassifier', '--batch-size', '3', '--baseline', 'noisy', '-o', 'out'])
    images = read(tmp_path / 'out' / 'taskeval_images.csv')
    for sigma, method, network in (('', 'clean', None), ('50', 'noisy', None), ('50', 'tiny', denoiser)):
        expected = direct_hits(folder, None if sigma == '' else 50, network)
        found = {row['image'].split('images/', 1)[1]: (int(row['top1']), int(row['top5'])) for row in images
                 if row['sigma'] == sigma and row['method'] == method}
        assert found == expected, method
        overall = next(r for r in read(tmp_path / 'out' / 'taskeval.csv') if r['method'] == method)
        assert float(overall['top1']) == pytest.approx(np.mean([h[0] for h in expected.values()]))
        assert float(overall['top5']) == pytest.approx(np.mean([h[1] for h in expected.values()]))
        for row in read(tmp_path / 'out' / 'taskeval_classes.csv'):
            if row['method'] == method:
                mine = [h for name, h in expected.items() if name.startswith(row['class'] + '/')]
                assert float(row['top5']) == pytest.approx(np.mean([h[1] for h in mine]))
    assert any(h[0] != h[1] for h in direct_hits(folder, None).values())  # top-5 is not top-1 here
    # the paired comparison: scipy on the per-image hits
    paired = {row['metric']: row for row in read(tmp_path / 'out' / 'taskeval_paired.csv')}
    noisy, tiny = direct_hits(folder, 50), direct_hits(folder, 50, denoiser)
    for metric, k in (('top1', 0), ('top5', 1)):
        differences = np.array([tiny[name][k] - noisy[name][k] for name in sorted(noisy)])
        assert float(paired[metric]['mean_difference']) == pytest.approx(differences.mean())
        if np.any(differences != 0):
            assert float(paired[metric]['wilcoxon_p']) == pytest.approx(stats.wilcoxon(differences).pvalue)


def test_a_list_file_gives_the_same_hits_as_the_folder(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [f'images/class{c}/img{i}.png {c}' for c in range(CLASSES) for i in range(2)]
    (tmp_path / 'list.txt').write_text('# path class\n' + '\n'.join(lines) + '\n')
    main(['--list', 'list.txt', '-s', '25', '--classifier', 'tests.tools.test_taskeval:TinyClassifier', '-o', 'a'])
    main(['--images', 'images', '-s', '25', '--classifier', 'tests.tools.test_taskeval:TinyClassifier', '-o', 'b'])
    keep = ('sigma', 'method', 'label', 'prediction', 'top1', 'top5')
    assert ([{k: r[k] for k in keep} for r in read(tmp_path / 'a' / 'taskeval_images.csv')]
            == [{k: r[k] for k in keep} for r in read(tmp_path / 'b' / 'taskeval_images.csv')])


def test_classes_map_to_a_classifiers_categories_by_name_or_are_refused():
    classifier = Classifier(nn.Identity(), None, 'resnet50', ['tench', 'goldfish', 'great white shark', 'tiger shark'])
    assert classifier.class_indices(['goldfish', 'great_white_shark']) == [1, 2]
    assert classifier.class_indices(['n1', 'n2', 'n3', 'n4']) == [0, 1, 2, 3]  # all of them: in order
    with pytest.raises(ValueError, match='1 class name.* none of its categories \\(n01440764\\)'):
        classifier.class_indices(['goldfish', 'n01440764'])


@pytest.mark.parametrize('arguments, expected', [
    (['--images', 'nowhere'], '--images nowhere'),
    (['--list', 'bad.txt'], 'line 1'),
    (['--images', 'images', '--classifier', 'resnet5o'], "classifiers; did you mean resnet50"),
    (['--images', 'images', '--classifier', 'tests.tools.test_taskeval:TupleClassifier'], 'gave tuple for'),
    (['--images', 'images', '--classifier', 'tests.tools.test_taskeval:FailingClassifier'],
     'failed on a batch of 1 image.s. .*RuntimeError: broken'),
    (['--images', 'images', '--classifier', 'tests.tools.test_taskeval:NaNClassifier'], 'gave NaN or infinite'),
    (['--images', 'images', '--baseline', 'nobody'], '--baseline nobody: not one of the methods'),
    (['--images', 'images', '-w', 'clean=usaid'], 'a NAME other than clean and noisy'),
    (['--images', 'images', '-s', '-5'], '--sigma'),
])
def test_mistakes_are_one_message(folder, tmp_path, monkeypatch, arguments, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'bad.txt').write_text('just-a-path\n')
    with pytest.raises(SystemExit, match=expected):
        main(arguments + ['-o', 'out', '--batch-size', '1'])


def test_offline_without_weights_says_which_file_to_put_where(folder, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    weights = torchvision.models.get_model_weights('mobilenet_v3_small').DEFAULT

    def offline(*args, **kwargs):
        raise OSError('no network')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(SystemExit) as error:
        main(['--images', str(folder), '-s', '25', '--classifier', 'mobilenet_v3_small', '-o', str(tmp_path / 'o')])
    assert weights.url in str(error.value) and str(tmp_path / 'torch' / 'hub' / 'checkpoints') in str(error.value)
    assert '--classifier-weights' in str(error.value)


class Recorder(nn.Module):
    """A classifier that keeps what it is given (and scores class 0 highest)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.extend(x.clone())
        return torch.arange(CLASSES, 0, -1, dtype=torch.float32).repeat(len(x), 1)


def test_the_classifier_sees_the_protocols_noisy_8_bit_images(folder):
    from torchvision.transforms import v2

    from usaid.taskeval import image_folder_items, taskeval
    items, names = image_folder_items(str(folder))
    recorder = Recorder()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    taskeval(items[:3], names, {}, [30], Classifier(recorder, v2.Normalize(mean, std), 'recorder'), batch_size=1)
    noisy_inputs = recorder.seen[1::2]  # per image: clean, then noisy at sigma 30 (batch size 1)
    for item, seen in zip(items[:3], noisy_inputs):
        rgb = cv2.imread(item.path)[..., ::-1].astype(np.float64) / 255.
        np.random.seed(0)
        noisy = np.round(np.clip(rgb + np.random.normal(0, 30 / 255., rgb.shape), 0, 1) * 255) / 255
        expected = (noisy - np.array(mean)) / np.array(std)
        assert np.allclose(seen.permute(1, 2, 0).numpy(), expected, atol=1e-5)
