"""Tasks registered by mega-fairseq (explicit imports, one per task)."""
from mega_fairseq.tasks import mega_language_modeling  # noqa: F401  (the 'mega_language_modeling' task)
from mega_fairseq.tasks import lra_image  # noqa: F401  (the 'lra-image' task)
from mega_fairseq.tasks import lra_text  # noqa: F401  (the 'lra-text' task)
from mega_fairseq.tasks import speech_commands  # noqa: F401  (the 'speech_commands' task)
