"""ClassifierHubInterface: ``predict`` with a trained ``lra`` / ``sc_raw`` classifier.

::

    from mega_fairseq.models.lra import LRAModel
    hub = LRAModel.from_pretrained("checkpoints/", "checkpoint_best.pt", "data-bin/listops")
    hub.predict("[MAX 4 3 [MIN 2 3 ] 1 0 ]")       # text: whitespace-separated tokens (or token ids)
    hub.predict([0, 255, 17, ...])                 # lra-image: raw pixel values 0..255, as in input/*.src
    hub.predict(waveform)                          # speech_commands: the processed waveform (16,000 floats)

Each call returns ``{"label", "class_id", "probabilities"}``: the label string of the label
dictionary for text (class ids follow its order), the class id itself otherwise; the probabilities of
every class (a float tensor of ``sentence_class_num`` values).
"""
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

Prediction = Dict[str, object]


class ClassifierHubInterface(nn.Module):
    """A loaded classifier with its task: turns one input sequence into a class and probabilities."""

    def __init__(self, cfg, task, model):
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.model = model.eval()
        self.input_type = model.encoder.encoder.input_type
        self.register_buffer("_float_tensor", torch.tensor([0], dtype=torch.float), persistent=False)

    @property
    def device(self):
        return self._float_tensor.device

    def encode(self, sequence: Union[str, Sequence, Tensor]) -> Tensor:
        """One input as the model reads it: (Time,) token ids for text, (Time,) floats otherwise."""
        if self.input_type == "text":
            return self._encode_text(sequence)
        values = torch.as_tensor(sequence)
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError("predict takes one non-empty sequence of values (Time,), got shape {}".format(
                tuple(values.shape)))
        normalization = getattr(self.task, "normalization", None)
        if normalization is not None:  # lra-image: raw pixels 0..255 as the data files hold them
            mean, std = normalization
            return (values.to(torch.get_default_dtype()) / 255.0 - mean) / std
        return values.to(torch.get_default_dtype())

    def _encode_text(self, sequence) -> Tensor:
        dictionary = self.task.source_dictionary
        if isinstance(sequence, str):
            tokens = dictionary.encode_line(sequence, add_if_not_exist=False, append_eos=True).long()
        else:
            tokens = torch.as_tensor(sequence, dtype=torch.long)
            if tokens.dim() != 1 or tokens.numel() == 0:
                raise ValueError("predict takes one non-empty sequence of token ids (Time,), got shape {}".format(
                    tuple(tokens.shape)))
        if getattr(self.task, "prepend_cls", False):
            tokens = torch.cat([tokens.new_tensor([self.task.cls_idx]), tokens])
        limit = self.model.max_positions()
        return tokens[:limit] if limit is not None else tokens

    def label(self, class_id: int):
        """The label of ``class_id``: the label-dictionary string for text tasks, the id otherwise."""
        names = getattr(self.task, "class_names", None)
        return names.get(class_id, class_id) if names else class_id

    def predict(self, sequence, second_document=None) -> Prediction:
        """Classify one sequence (and its ``second_document`` for two-document models such as AAN)."""
        sample = {"net_input": self._net_input(sequence)}
        if second_document is not None:
            sample["net_input1"] = self._net_input(second_document)
        with torch.no_grad():
            logits = self.model(sample)["encoder_out"]
            probabilities = self.model.get_normalized_probs({"encoder_out": logits}, log_probs=False)[0]
        class_id = int(probabilities.argmax())
        return {"label": self.label(class_id), "class_id": class_id, "probabilities": probabilities.cpu()}

    def _net_input(self, sequence) -> Dict[str, Tensor]:
        values = self.encode(sequence).to(self.device)
        return {"src_tokens": values.unsqueeze(0), "src_lengths": torch.tensor([values.numel()], device=self.device)}
