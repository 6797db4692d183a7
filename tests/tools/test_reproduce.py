"""usaid-reproduce on small synthetic data: every experiment whose data is there is run and reported, the others are
listed with how to get them, and a rerun reuses what did not change."""
import cv2
import numpy as np
import torch
from PIL import Image

from tests.conftest import smooth_image, write_options
from usaid.archs import USAID
from usaid.tools.reproduce import main

TINY = {'type': 'USAID', 'num_feat': 8, 'num_layers': 3}


def tiny_model(tmp_path, name, seed):
    torch.manual_seed(seed)
    torch.save({'params': USAID(num_feat=8, num_layers=3).state_dict()}, tmp_path / f'{name}.pth')
    return str(write_options({'network_g': TINY, 'path': {'pretrain_network_g': str(tmp_path / f'{name}.pth')}},
                             tmp_path / f'{name}.yml'))


def synthetic_data(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'testsets' / 'Kodak24').mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(tmp_path / 'testsets' / 'Kodak24' / f'k{i}.png'), smooth_image(rng, 40, 48))
    voc = tmp_path / 'VOC2012'
    for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (voc / folder).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(smooth_image(rng, 36, 44)).save(voc / 'JPEGImages' / f'{i}.jpg', quality=95)
        label = np.zeros((36, 44), np.uint8)
        label[:, 22:] = 15
        Image.fromarray(label).save(voc / 'SegmentationClass' / f'{i}.png')
    (voc / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('0\n1\n2\n')
    for c in range(7):
        (tmp_path / 'imagenet' / f'class{c}').mkdir(parents=True)
        cv2.imwrite(str(tmp_path / 'imagenet' / f'class{c}' / 'a.png'), smooth_image(rng, 32, 40))
    return tmp_path / 'testsets', voc, tmp_path / 'imagenet'


def test_all_three_experiments_one_report_and_a_rerun_reuses_them(tmp_path, capsys):
    testsets, voc, imagenet = synthetic_data(tmp_path)
    arguments = ['-o', str(tmp_path / 'out'), '--testsets', str(testsets), '--voc', str(voc), '--imagenet',
                 str(imagenet), '-m', f'base={tiny_model(tmp_path, "base", 0)}', '-m',
                 f'other={tiny_model(tmp_path, "other", 1)}', '--baseline', 'base', '-s', '25', '--segnet',
                 'tests.tools.test_segeval:TinySegNet', '--classifier', 'tests.tools.test_taskeval:TinyClassifier']
    main(arguments)
    first = capsys.readouterr().out
    assert 'ran segmentation: run' in first and 'ran classification: run' in first
    report = (tmp_path / 'out' / 'report.md').read_text()
    for part in ('## Denoising', 'Paired with base', '## Segmentation after denoising', 'class_iou.png',
                 '## Classification after denoising', 'denoising: CBSD68, McMaster, Urban100: not in'):
        assert part in report, part
    assert (tmp_path / 'out' / 'segmentation' / 'class_iou.png').stat().st_size > 0
    assert (tmp_path / 'out' / 'denoising' / 'compare_paired.csv').exists()
    main(arguments)
    again = capsys.readouterr().out
    assert 'ran segmentation: reused' in again and 'ran classification: reused' in again
    assert '2 job(s) reused from the cache' in again
    # a changed model runs again
    tiny_model(tmp_path, 'other', 2)
    main(arguments)
    assert 'ran segmentation: run' in capsys.readouterr().out


def test_without_data_the_report_says_what_to_get(tmp_path, capsys):
    main(['-o', str(tmp_path / 'out'), '--testsets', str(tmp_path / 'none')])
    report = (tmp_path / 'out' / 'report.md').read_text()
    assert 'nothing: no data was found' in report
    assert 'datasets/README.md' in report and 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/' in report
    assert 'image-net.org' in report


SEED = {'value': 5}


class SeededClassifier(torch.nn.Module):
    """A classifier whose weights a test changes between runs (as a user retrains their own network)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(SEED['value'])
        self.head = torch.nn.Linear(3, 7)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(7, 3, generator=generator))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x.mean((2, 3)))


def test_a_changed_classifier_runs_again_and_test_sets_are_checked(tmp_path, capsys):
    testsets, _, imagenet = synthetic_data(tmp_path)
    (testsets / 'CBSD68').mkdir()  # present but empty: skipped with the reason, the others still run
    arguments = ['-o', str(tmp_path / 'out'), '--testsets', str(testsets), '--imagenet', str(imagenet), '-m',
                 f'base={tiny_model(tmp_path, "base", 0)}', '--baseline', 'base', '-s', '25', '--classifier',
                 'tests.tools.test_reproduce:SeededClassifier']
    main(arguments)
    first = capsys.readouterr().out
    assert 'ran classification: run' in first
    assert 'skipped denoising: CBSD68' in first and 'NOT the published copy: 3 files' in first
    main(arguments)
    assert 'ran classification: reused' in capsys.readouterr().out
    SEED['value'] = 6
    try:
        main(arguments)
    finally:
        SEED['value'] = 5
    assert 'ran classification: run' in capsys.readouterr().out


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    import pytest

    from usaid.paths import output_lock
    with output_lock(str(tmp_path / 'out'), 'usaid-reproduce'), pytest.raises(SystemExit,
                                                                                match='another usaid-reproduce'):
        main(['-o', str(tmp_path / 'out'), '--testsets', str(tmp_path / 'none')])


def test_an_interrupted_step_is_run_again_and_finished_ones_are_kept(tmp_path, monkeypatch, capsys):
    import pytest

    from usaid import segeval
    testsets, voc, _ = synthetic_data(tmp_path)
    arguments = ['-o', str(tmp_path / 'out'), '--testsets', str(testsets), '--voc', str(voc), '-m',
                 f'base={tiny_model(tmp_path, "base", 0)}', '--baseline', 'base', '-s', '25', '--segnet',
                 'tests.tools.test_segeval:TinySegNet']
    real = segeval.segeval

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(segeval, 'segeval', interrupted)
    with pytest.raises(SystemExit, match='interrupted; finished steps are kept'):
        main(arguments)
    assert not (tmp_path / 'out' / 'segmentation' / '.stamp').exists()
    monkeypatch.setattr(segeval, 'segeval', real)
    capsys.readouterr()
    main(arguments)
    out = capsys.readouterr().out
    assert 'ran segmentation: run' in out and '1 job(s) reused from the cache' in out
