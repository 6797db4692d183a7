import math

from basicsr.data.data_sampler import EnlargedSampler


class ResumableSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` (the same order, epoch by epoch) made exactly resumable.

    ``usaid.compat`` installs it in place of ``EnlargedSampler`` for BasicSR's training pipeline. It adds two things:

    1. **Resume inside an epoch.** BasicSR restarts an interrupted epoch from its first batch. When the train dataset's
       options carry ``resume: {iter, batch_size}`` (set by ``usaid.compat.load_resume_state``), the interrupted
       epoch skips the batches the interrupted run had already trained on. A state written with another number of
       processes or batch size (``saved_replicas``, ``saved_batch_size``) skips the same fraction of the epoch, with a
       warning: those samples cannot be the same.
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
        self.ratio = ratio
        self.resume = getattr(dataset, 'opt', {}).get('resume')
        if self.resume and self._saved_layout() != (self.num_replicas, self.resume['batch_size']):
            from basicsr.utils import get_root_logger  # the run's logger exists once samplers are built
            replicas, batch_size = self._saved_layout()
            get_root_logger().warning(
                f"{self.resume['state']} was written by {replicas} process(es) taking {batch_size} samples each per "
                f"iteration; this run has {self.num_replicas} taking {self.resume['batch_size']}. The resume is not "
                'exact: the interrupted epoch continues from the same fraction of its batches, with other samples in '
                'them; the iteration count, learning-rate schedule and EMA go on from the state (scale '
                'train:optim_g:lr yourself if the total batch changed).')

    def __iter__(self):
        indices = list(super().__iter__())
        if getattr(self.dataset, 'sample_numbers', False):
            first = (self.epoch * self.num_replicas + self.rank) * self.num_samples + 1
            indices = [index + len(self.dataset) * (first + position) for position, index in enumerate(indices)]
        if self.resume:
            # every epoch before the interrupted one ran its full len(loader) batches (drop_last), so the batches
            # already done in this epoch follow from the iteration; none for the epochs after it
            replicas, saved_batch_size = self._saved_layout()
            saved_per_epoch = math.ceil(len(self.dataset) * self.ratio / replicas) // saved_batch_size
            done_in_epoch = max(self.resume['iter'] - self.epoch * saved_per_epoch, 0)
            batch_size = self.resume['batch_size']
            if (replicas, saved_batch_size) != (self.num_replicas, batch_size):  # another layout: the same fraction
                done_in_epoch = done_in_epoch * (self.num_samples // batch_size) // saved_per_epoch
            indices = indices[done_in_epoch * batch_size:]
        return iter(indices)

    def _saved_layout(self):
        """``(replicas, batch_size)`` of the run that wrote the training state being resumed."""
        return (self.resume.get('saved_replicas', self.num_replicas),
                self.resume.get('saved_batch_size', self.resume['batch_size']))
