"""Criterions registered by mega-fairseq (explicit imports, one per criterion)."""
from mega_fairseq.criterions import lra_cross_entropy  # noqa: F401  (the 'lra_cross_entropy' criterion)
