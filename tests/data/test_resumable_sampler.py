import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.utils import set_random_seed

from tests.conftest import tiny_options
from usaid.data.resumable_sampler import ResumableSampler


def train_batches(root, epochs=2, num_workers=0, resume=None, start_epoch=0):
    dataset_opt = {**tiny_options(root)['datasets']['train'], 'phase': 'train', 'num_worker_per_gpu': num_workers}
    if resume:
        dataset_opt['resume'] = resume
    set_random_seed(3)
    dataset = build_dataset(dataset_opt)
    sampler = ResumableSampler(dataset, 1, 0, ratio=2)
    loader = build_dataloader(dataset, dataset_opt, num_gpu=0, dist=False, sampler=sampler, seed=3)
    batches = []
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        batches += [(epoch, b) for b in loader]
    return batches


def test_same_data_whatever_the_number_of_workers(image_folder):
    without, with_workers = train_batches(image_folder), train_batches(image_folder, num_workers=2)
    assert len(without) == len(with_workers) == 8
    for (_, a), (_, b) in zip(without, with_workers):
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])


def test_epochs_differ_and_a_resumed_epoch_skips_what_was_done(image_folder):
    full = train_batches(image_folder)
    assert not torch.equal(full[0][1]['lq'], full[4][1]['lq'])  # every sample has its own crop and noise
    resumed = train_batches(image_folder, resume={'iter': 6, 'batch_size': 2}, start_epoch=1)
    assert [e for e, _ in resumed] == [1, 1]
    for (_, a), (_, b) in zip(full[6:], resumed):
        assert torch.equal(a['lq'], b['lq'])


def test_other_datasets_get_plain_indices():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 5

    basicsr_sampler = ResumableSampler.__bases__[0]  # BasicSR's EnlargedSampler, which compat replaces
    ours, theirs = ResumableSampler(Plain(), 2, 1, ratio=2), basicsr_sampler(Plain(), 2, 1, ratio=2)
    for epoch in range(3):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs) and len(list(ours)) == 5
