from basicsr.data.data_sampler import EnlargedSampler


class ResumableSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` (the same order, epoch by epoch) made exactly resumable.

    ``usaid.compat`` installs it in place of ``EnlargedSampler`` for BasicSR's training pipeline. It adds two things:

    1. **Resume inside an epoch.** BasicSR restarts an interrupted epoch from its first batch. When the train dataset's
       options carry ``resume: {iter, batch_size}`` (set by ``usaid.compat.load_resume_state``), the interrupted
       epoch skips the batches the interrupted run had already trained on.
    2. **Randomness by sample, not by worker.** For datasets with ``sample_numbers = True`` it yields
       ``image_index + len(dataset) * sample_number`` instead of the image index, where ``sample_number`` (from 1) is
       the sample's position in the whole run (epoch, rank, position). Such a dataset draws the sample's crop, flips and
       noise from a generator seeded by that number, so the data no longer depend on which worker loads a sample, on
       how many workers there are, or on where a worker's random stream stood, and a resumed run sees exactly the data
       of an uninterrupted one. Other datasets get plain image indices, as from ``EnlargedSampler``.

    Args:
        dataset (torch.utils.data.Dataset): Dataset used for sampling.
        num_replicas (int): Number of processes (world size).
        rank (int): Rank of this process.
        ratio (int): Enlarging ratio. Default: 1.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.resume = getattr(dataset, 'opt', {}).get('resume')

    def __iter__(self):
        indices = list(super().__iter__())
        if getattr(self.dataset, 'sample_numbers', False):
            first = (self.epoch * self.num_replicas + self.rank) * self.num_samples + 1
            indices = [index + len(self.dataset) * (first + position) for position, index in enumerate(indices)]
        if self.resume:
            # every epoch before the interrupted one ran its full len(loader) batches (drop_last), so the batches
            # already done in this epoch follow from the iteration; none for the epochs after it
            batch_size = self.resume['batch_size']
            done_in_epoch = self.resume['iter'] - self.epoch * (self.num_samples // batch_size)
            indices = indices[max(done_in_epoch, 0) * batch_size:]
        return iter(indices)
