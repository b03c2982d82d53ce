"""``lra_cross_entropy``: cross-entropy of the sequence classifiers, with accuracy.

As the official criterion: the model is called with the whole sample (``model(sample)``), the
loss is the summed negative log-likelihood of the target classes (nats), ``sample_size`` is the
number of rows with ``--sentence-avg`` and the number of tokens otherwise. The logged ``loss`` is
``sum(loss) / sum(sample_size) / ln 2`` (bits) and ``accuracy`` is ``100 * sum(correct) /
sum(rows)`` (percent), both pooled over every batch before dividing. Select checkpoints with
``--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric``.
"""
import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II


@dataclass
class LRACrossEntropyConfig(FairseqDataclass):
    sentence_avg: bool = field(default=II("optimization.sentence_avg"),
                               metadata={"help": "normalise the loss by rows instead of tokens"})


@register_criterion("lra_cross_entropy", dataclass=LRACrossEntropyConfig)
class LRACrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg: bool):
        super().__init__(task)
        self.sentence_avg = bool(sentence_avg)

    def forward(self, model, sample, reduce=True):
        """Returns ``(loss, sample_size, logging_output)``; loss is the nats summed over the rows."""
        net_output = model(sample)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        lprobs = lprobs.view(-1, lprobs.size(-1))
        targets = model.get_targets(sample, net_output).view(-1)
        if targets.numel() != lprobs.size(0):
            raise ValueError("the batch has {} targets for {} rows of logits: each row needs exactly one class "
                             "id".format(targets.numel(), lprobs.size(0)))
        num_classes = lprobs.size(-1)
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError("class ids range over {}..{}, but the model predicts {} classes (0..{}); set "
                             "--sentence-class-num to the number of classes".format(
                                 int(targets.min()), int(targets.max()), num_classes, num_classes - 1))
        loss = F.nll_loss(lprobs, targets, reduction="sum" if reduce else "none")
        correct = (lprobs.argmax(dim=-1) == targets).sum()
        sample_size = sample["nsentences"] if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "ncorrects": correct,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Log ``loss`` (bits per row or token) and ``accuracy`` (percent), pooled over the outputs."""
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        if nsentences > 0 and "ncorrects" in logging_outputs[0]:
            ncorrects = sum(log.get("ncorrects", 0) for log in logging_outputs)
            metrics.log_scalar("accuracy", 100.0 * ncorrects / nsentences, nsentences, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
