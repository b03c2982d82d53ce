"""EpochMonolingualDataset: fairseq's MonolingualDataset over blocks that change every epoch."""
from fairseq.data import MonolingualDataset


class EpochMonolingualDataset(MonolingualDataset):
    """A :class:`MonolingualDataset` whose block dataset is re-segmented by ``set_epoch``.

    fairseq's MonolingualDataset copies the block sizes once and lets the batch iterator be
    reused across epochs; here ``set_epoch`` is forwarded, the sizes are refreshed and the
    iterator is rebuilt each epoch, so new block lengths give new batches.
    """

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.sizes = self.dataset.sizes

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False
