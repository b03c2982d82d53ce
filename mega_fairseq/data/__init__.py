"""Datasets used by the Mega language-modeling task."""
from mega_fairseq.data.epoch_monolingual_dataset import EpochMonolingualDataset
from mega_fairseq.data.variant_block_dataset import VariantBlockDataset

__all__ = ["EpochMonolingualDataset", "VariantBlockDataset"]
