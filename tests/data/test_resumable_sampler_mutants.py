"""Tests written for mutants of usaid/data/resumable_sampler.py that survived `make mutation` (docs/testing.md#mutation-
testing): the sample numbers of a run, over ranks and epochs, are 1, 2, 3, ... each once; an epoch after the
interrupted one is not cut; the enlarging ratio defaults to BasicSR's 1."""
import logging

import torch

from usaid.data.resumable_sampler import ResumableSampler

EnlargedSampler = ResumableSampler.__bases__[0]  # BasicSR's, which usaid.compat replaces under its own name


class Numbered(torch.utils.data.Dataset):
    """A dataset of ``size`` images that draws its samples' randomness from their numbers."""
    sample_numbers = True

    def __init__(self, size, resume=None):
        self.size, self.opt = size, {'resume': resume} if resume else {}

    def __len__(self):
        return self.size


def epoch(sampler, number):
    sampler.set_epoch(number)
    return list(sampler)


def test_sample_numbers_count_the_samples_of_the_run_from_one():
    images, replicas, ratio, epochs = 5, 2, 2, 3
    per_rank = images * ratio // replicas  # 5 samples per rank and epoch
    numbers = []
    for e in range(epochs):
        for rank in range(replicas):
            ours = epoch(ResumableSampler(Numbered(images), replicas, rank, ratio), e)
            plain = epoch(EnlargedSampler(Numbered(images), replicas, rank, ratio), e)
            assert [v % images for v in ours] == plain  # the image is BasicSR's
            rank_numbers = [v // images for v in ours]
            # the n-th sample of (epoch e, rank r) is the run's sample (e * replicas + r) * per_rank + n, from 1
            assert rank_numbers == list(range((e * replicas + rank) * per_rank + 1,
                                              (e * replicas + rank + 1) * per_rank + 1))
            numbers += rank_numbers
    assert sorted(numbers) == list(range(1, epochs * replicas * per_rank + 1))


def test_only_the_interrupted_epoch_skips_its_done_batches():
    # 8 images, batches of 2: 4 iterations an epoch; interrupted after iteration 3, in epoch 0
    resume = {'iter': 3, 'batch_size': 2}
    plain = EnlargedSampler(Numbered(8), 1, 0, 1)
    resumed = ResumableSampler(Numbered(8, resume), 1, 0, 1)
    assert [v % 8 for v in epoch(resumed, 0)] == epoch(plain, 0)[6:]
    assert [v % 8 for v in epoch(resumed, 1)] == epoch(plain, 1)  # the next epoch is whole
    assert [v % 8 for v in epoch(resumed, 2)] == epoch(plain, 2)


def test_the_enlarging_ratio_defaults_to_one():
    assert len(list(ResumableSampler(Numbered(6), 1, 0))) == 6 == len(list(EnlargedSampler(Numbered(6), 1, 0)))


def test_a_state_of_another_layout_resumes_at_the_same_fraction_of_the_epoch(caplog):
    # 8 images. Written by 2 processes x batch 2 (2 iterations an epoch), or 1 x batch 4 (2 iterations an epoch);
    # interrupted after iteration 1 of epoch 0: half the epoch. Resumed by 1 process x batch 2 (4 iterations an
    # epoch): 2 batches of 2 are skipped.
    plain = epoch(EnlargedSampler(Numbered(8), 1, 0, 1), 0)
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)  # BasicSR's logger does not propagate
    try:
        for saved_replicas, saved_batch_size in ((2, 2), (1, 4)):
            resume = {'iter': 1, 'batch_size': 2, 'saved_replicas': saved_replicas,
                      'saved_batch_size': saved_batch_size, 'state': '1.state'}
            caplog.clear()
            resumed = ResumableSampler(Numbered(8, resume), 1, 0, 1)
            assert '1.state was written by' in caplog.text and 'The resume is not exact' in caplog.text
            assert [v % 8 for v in epoch(resumed, 0)] == plain[4:]
    finally:
        logger.removeHandler(caplog.handler)
