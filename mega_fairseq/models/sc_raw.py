"""``sc_raw``: the Mega classifier of raw Speech Commands waveforms, and its named presets.

Presets (``--arch``; hydra: ``model=sc_raw/<preset>``): ``sc_raw`` (the dataclass defaults),
``mega_sc_raw``, ``mega_sc_raw_base`` (the same values) and ``mega_sc_raw_big``. The model is the
``lra`` classifier on real-valued input (a ``RealNumberEmbedding`` per audio sample, no padding),
with the official parameter names and the ``model(sample)`` forward contract.
"""
from fairseq.models import register_model

from mega_fairseq.models.arch_presets import register_presets
from mega_fairseq.models.lra import LRAModel
from mega_fairseq.models.sc_raw_config import SC_RAW_FLAG_DEFAULTS, SC_RAW_PRESETS, SCRawConfig


@register_model("sc_raw", dataclass=SCRawConfig)
class SCRawModel(LRAModel):
    """:class:`LRAModel` reading :class:`SCRawConfig`; the input is always real-valued waveforms."""

    config_class = SCRawConfig
    flag_defaults = SC_RAW_FLAG_DEFAULTS

    @classmethod
    def input_type(cls, settings, task) -> str:
        if settings.input_type is not None and str(settings.input_type) != "image":
            raise ValueError("--input-type {} is not supported by model sc_raw; allowed values: image (raw "
                             "waveform samples)".format(settings.input_type))
        return "image"


register_presets("sc_raw", SCRawConfig, SC_RAW_PRESETS)
