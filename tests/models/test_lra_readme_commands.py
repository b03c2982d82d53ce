"""The official README training commands (LRA: six tasks; SC-Raw: base and big) parse unchanged with
``--user-dir`` added, and build the model they describe (on the meta device: no memory). The hydra path that fairseq-train
takes next is covered by test_lra_presets.py and the official-checkpoint tests."""
import shlex

import pytest
import torch
from fairseq import models, options

import mega_fairseq
from helpers import StubTask, word_dictionary

CHUNK = "128"
COMMON = ("--seed 1 --ddp-backend c10d --find-unused-parameters --criterion lra_cross_entropy "
          "--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric --optimizer adam "
          "--adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --clip-norm 1.0 --sentence-avg --lr-scheduler linear_decay "
          "--end-learning-rate 0.0 --warmup-init-lr '1e-07' --keep-last-epochs 1 --save-dir /tmp/unused "
          "--log-format simple --log-interval 100 --num-workers 0")
LRA_TEXT = "--task lra-text --input-type text --activation-fn silu --sen-rep-type mp"
LRA_IMAGE = "--activation-fn silu --attention-activation-fn laplace --norm-type batchnorm --sen-rep-type mp " \
            "--encoder-normalize-before --task lra-image --input-type image --dropout 0.0"
#: arch -> (the recipe's own flags, what the built model must show)
RECIPES = {
    "mega_lra_listop": (LRA_TEXT + " --encoder-layers 6 --n-dim 16 --attention-activation-fn softmax --norm-type "
                        "layernorm --lr 0.001 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay "
                        "0.01 --batch-size 64 --update-freq 1 --max-update 90000 --max-sentences-valid 256 "
                        "--total-num-update 90000 --warmup-updates 3000 --required-batch-size-multiple 1",
                        dict(layers=6, norm="layernorm", attention="softmax", classes=10)),
    "mega_lra_imdb": (LRA_TEXT + " --encoder-layers 4 --n-dim 16 --attention-activation-fn softmax --norm-type "
                      "scalenorm --lr 0.004 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay "
                      "0.01 --batch-size 25 --update-freq 2 --max-update 25000 --required-batch-size-multiple 1 "
                      "--total-num-update 25000 --warmup-updates 10000 --max-sentences-valid 100",
                      dict(layers=4, norm="scalenorm", attention="softmax", classes=2)),
    "mega_lra_aan": (LRA_TEXT + " --encoder-layers 6 --n-dim 16 --attention-activation-fn softmax --norm-type "
                     "scalenorm --lr 0.003 --dropout 0.1 --attention-dropout 0.0 --act-dropout 0.0 --weight-decay "
                     "0.04 --batch-size 8 --update-freq 8 --max-update 91960 --total-num-update 91960 "
                     "--warmup-updates 10000 --max-sentences-valid 64",
                     dict(layers=6, norm="scalenorm", attention="softmax", classes=2, documents=2)),
    "mega_lra_cifar10": (LRA_IMAGE + " --pixel-normalization 0.48 0.24 --encoder-layers 8 --n-dim 16 --lr 0.01 "
                         "--attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.02 --batch-size 50 "
                         "--update-freq 1 --max-update 180000 --total-num-update 180000 --warmup-updates 9000 "
                         "--required-batch-size-multiple 1",
                         dict(layers=8, norm="batchnorm", attention="laplace", classes=10, prenorm=True)),
    "mega_lra_pf32": (LRA_IMAGE + " --pixel-normalization 0.5 0.5 --encoder-layers 6 --n-dim 16 --lr 0.01 "
                      "--attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 --batch-size 128 --update-freq 1 "
                      "--max-update 250000 --total-num-update 250000 --warmup-updates 50000 --max-sentences-valid 512",
                      dict(layers=6, norm="batchnorm", attention="laplace", classes=2, prenorm=True)),
    "mega_lra_pf128": (LRA_IMAGE.replace("batchnorm", "syncbatchnorm") + " --pixel-normalization 0.5 0.5 "
                       "--encoder-layers 4 --n-dim 16 --lr 0.01 --attention-dropout 0.0 --act-dropout 0.0 "
                       "--weight-decay 0.01 --batch-size 2 --update-freq 8 --max-update 125000 --total-num-update "
                       "125000 --warmup-updates 25000 --warmup-power 2 --max-sentences-valid 12",
                       dict(layers=4, norm="syncbatchnorm", attention="laplace", classes=2, prenorm=True)),
    "mega_sc_raw_base": ("--task speech_commands --encoder-normalize-before --lr 0.01 --dropout 0.0 "
                         "--attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 --batch-size 20 --update-freq 1 "
                         "--max-update 250000 --total-num-update 250000 --warmup-updates 10000 "
                         "--required-batch-size-multiple 1 --sentence-class-num 10 --max-positions 16000 "
                         "--sc-dropped-rate 0.",
                         dict(layers=6, norm="batchnorm", attention="laplace", classes=10, prenorm=True, width=60)),
    "mega_sc_raw_big": ("--task speech_commands --encoder-normalize-before --lr 0.008 --dropout 0.0 "
                        "--attention-dropout 0.0 --act-dropout 0.0 --weight-decay 0.01 --batch-size 20 --update-freq 1 "
                        "--max-update 250000 --total-num-update 250000 --warmup-updates 10000 "
                        "--required-batch-size-multiple 1 --sentence-class-num 10 --max-positions 16000 "
                        "--sc-dropped-rate 0.",
                        dict(layers=6, norm="batchnorm", attention="laplace", classes=10, prenorm=True, width=72)),
}


def parse(arch):
    flags, _ = RECIPES[arch]
    argv = ["/data", "--user-dir", mega_fairseq.USER_DIR, "-a", arch, "--chunk-size", CHUNK,
            *shlex.split(COMMON), *shlex.split(flags)]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


@pytest.mark.parametrize("arch", sorted(RECIPES))
def test_official_readme_command_parses_and_builds_its_model(arch):
    args = parse(arch)
    expected = RECIPES[arch][1]
    task = StubTask(None)
    if args.task == "lra-text":
        task = StubTask(word_dictionary(40, prefix="t"))
    with torch.device("meta"):
        model = models.build_model(args, task)
    settings = model.settings
    assert (settings.encoder_layers, settings.norm_type, settings.attention_activation_fn) == \
        (expected["layers"], expected["norm"], expected["attention"])
    assert settings.chunk_size == int(CHUNK) and settings.sentence_class_num == expected["classes"]
    assert bool(settings.encoder_normalize_before) == expected.get("prenorm", False)
    assert model.num_documents == expected.get("documents", 1)
    if "width" in expected:
        assert settings.encoder_embed_dim == expected["width"]
    assert len(model.encoder.encoder.layers) == expected["layers"]
    assert args.criterion == "lra_cross_entropy" and args.best_checkpoint_metric == "accuracy"
    assert args.lr_scheduler == "linear_decay" and args.maximize_best_checkpoint_metric
