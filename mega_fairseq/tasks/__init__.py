"""Tasks registered by mega-fairseq (explicit imports, one per task)."""
from mega_fairseq.tasks import mega_language_modeling  # noqa: F401  (the 'mega_language_modeling' task)
