"""mega-fairseq: Mega ("Moving Average Equipped Gated Attention") as a fairseq user-dir plugin.

Use it with stock fairseq 0.12.2 command-line tools through ``--user-dir``::

    fairseq-train --user-dir "$(python -m mega_fairseq)" --arch mega_wmt_en_de ...

Importing this package registers the plugin's models, tasks and LR schedulers with fairseq's
registries; the imports below are explicit so that what gets registered is visible here.
"""
import os

__version__ = "0.1.0"

#: Directory to pass to fairseq's ``--user-dir`` (``python -m mega_fairseq`` prints it).
USER_DIR = os.path.dirname(os.path.abspath(__file__))

from mega_fairseq import models  # noqa: E402,F401  (registers models and architectures)
from mega_fairseq import optim  # noqa: E402,F401  (registers the linear_decay LR scheduler)
from mega_fairseq import tasks  # noqa: E402,F401  (registers the mega_language_modeling task)
from mega_fairseq import criterions  # noqa: E402,F401  (registers the lra_cross_entropy criterion)
