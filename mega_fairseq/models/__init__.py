"""Models and named architectures registered by mega-fairseq (explicit imports, one per model)."""
from mega_fairseq.models import mega  # noqa: F401  (the 'mega' encoder-decoder and its presets)
from mega_fairseq.models import mega_lm  # noqa: F401  (the 'mega_lm' language model and its presets)
from mega_fairseq.models import lra  # noqa: F401  (the 'lra' sequence classifier and its presets)
from mega_fairseq.models import sc_raw  # noqa: F401  (the 'sc_raw' speech classifier and its presets)
