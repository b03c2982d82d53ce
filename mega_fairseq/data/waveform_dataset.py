"""``WaveformDataset``: fixed-length real-valued sequences (raw audio) held as one ``N x L`` tensor."""
import torch
from fairseq.data import FairseqDataset

from mega_fairseq.data.equal_length_stack import stack_equal_length


class WaveformDataset(FairseqDataset):
    """Rows of ``waveforms`` (``N x L`` float): items ``(L,)``, batches ``B x L``.

    Args:
        waveforms: ``N x L`` (or the official stored ``N x 1 x L``) float tensor.
        where: where the tensor came from, for error messages.
    """

    def __init__(self, waveforms: torch.Tensor, where: str = "waveforms"):
        super().__init__()
        if waveforms.dim() == 3 and waveforms.size(1) == 1:
            waveforms = waveforms[:, 0, :]
        if waveforms.dim() != 2 or not waveforms.is_floating_point():
            raise ValueError("{}: expected a float tensor N x 1 x L or N x L of waveforms, got {} {}".format(
                where, waveforms.dtype, tuple(waveforms.shape)))
        self.waveforms = waveforms
        self.sizes = torch.full((waveforms.size(0),), waveforms.size(1), dtype=torch.long).numpy()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.waveforms[index]

    def __len__(self) -> int:
        return self.waveforms.size(0)

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def collater(self, samples):
        """``B`` items ``(L,)`` -> ``B x L``."""
        return stack_equal_length(samples, "waveform")
