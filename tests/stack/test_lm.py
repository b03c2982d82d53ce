"""The patched fairseq stack on a tiny language-modeling task: preprocess, train a stock
transformer_lm, fairseq-eval-lm, and fairseq-hydra-train from a YAML config."""
import re
import textwrap

import pytest

from helpers import run_cli
from helpers import write_lm_corpus

TINY_TRANSFORMER_LM = [
    "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
    "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
    "--tokens-per-sample", "32", "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "0.005",
    "--max-tokens", "256", "--no-progress-bar", "--log-interval", "1", "--log-format", "simple",
    "--num-workers", "0", "--seed", "5", "--cpu",
]


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack_lm")
    raw = write_lm_corpus(root / "raw")
    data = root / "data-bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt",
            "--validpref", raw / "valid.txt", "--testpref", raw / "test.txt",
            "--destdir", data, "--workers", "1")
    return {"root": root, "data": data}


def test_transformer_lm_trains_and_eval_lm_reports_perplexity(lm_data):
    save = lm_data["root"] / "ckpt_lm"
    board = lm_data["root"] / "tensorboard"
    train = run_cli("fairseq-train", lm_data["data"], *TINY_TRANSFORMER_LM, "--max-update", "5",
                    "--save-dir", save, "--tensorboard-logdir", board)
    # tensorboardX is installed (pinned): --tensorboard-logdir works, and no command asks to install it
    assert "Please install tensorboardX" not in train.stdout + train.stderr
    assert list((board / "train").glob("events.out.tfevents.*")), sorted(p.name for p in board.rglob("*"))
    proc = run_cli("fairseq-eval-lm", lm_data["data"], "--path", save / "checkpoint_last.pt",
                   "--tokens-per-sample", "32", "--max-tokens", "512", "--cpu", "--gen-subset", "test")
    log = proc.stdout + proc.stderr
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log)
    assert match, log[-2000:]
    loss2, ppl = float(match.group(1)), float(match.group(2))
    assert ppl == pytest.approx(2 ** loss2, rel=1e-3)
    # 5 updates on a 15-word vocabulary: better than uniform over the dictionary, far from perfect
    vocab = len((lm_data["data"] / "dict.txt").read_text().splitlines()) + 4
    assert 1.0 < ppl < vocab


def test_eval_lm_refuses_blocks_longer_than_the_model_takes_instead_of_skipping_them(lm_data):
    # trained with --tokens-per-sample 32, so the model takes at most 32 positions; 64-token blocks used
    # to be skipped silently ("Evaluated 0 tokens", perplexity 1.00, exit 0)
    save = lm_data["root"] / "ckpt_lm"
    if not (save / "checkpoint_last.pt").exists():
        run_cli("fairseq-train", lm_data["data"], *TINY_TRANSFORMER_LM, "--max-update", "5", "--save-dir", save)
    proc = run_cli("fairseq-eval-lm", lm_data["data"], "--path", save / "checkpoint_last.pt",
                   "--tokens-per-sample", "64", "--max-tokens", "512", "--cpu", "--gen-subset", "test", check=False)
    assert proc.returncode != 0 and "Perplexity" not in proc.stdout + proc.stderr
    assert re.search(r"ValueError: fairseq-eval-lm: blocks of up to 64 tokens \(--tokens-per-sample 64\) are longer "
                     r"than the model's maximum of 32 tokens .* Allowed: --tokens-per-sample <= 32", proc.stderr), \
        proc.stderr[-2000:]


def test_commands_print_no_warning_that_is_not_about_the_run(lm_data, tmp_path):
    # a new user's happy path with Mega: no Hydra deprecation notices about fairseq's config code, no
    # pin_memory / torch.cuda.amp warnings, no "Please install tensorboardX"
    import mega_fairseq

    save = tmp_path / "ckpt_mega"
    train = run_cli("fairseq-train", lm_data["data"], "--user-dir", mega_fairseq.USER_DIR, "--task",
                    "mega_language_modeling", "--arch", "mega_lm", "--decoder-layers", "1", "--decoder-embed-dim", "16",
                    "--decoder-hidden-dim", "24", "--decoder-ffn-embed-dim", "24", "--decoder-z-dim", "8",
                    "--decoder-n-dim", "4", "--decoder-chunk-size", "8", "--optimizer", "adam", "--lr", "0.01",
                    "--max-tokens", "256", "--max-update", "2", "--cpu", "--num-workers", "1", "--save-dir", save,
                    "--no-progress-bar", "--log-format", "simple")
    evaluate = run_cli("fairseq-eval-lm", lm_data["data"], "--user-dir", mega_fairseq.USER_DIR, "--task",
                       "mega_language_modeling", "--path", save / "checkpoint_last.pt", "--cpu", "--gen-subset", "test")
    for proc in (train, evaluate):
        log = proc.stdout + proc.stderr
        noise = [line for line in log.splitlines()
                 if re.search(r"[A-Za-z]+Warning: |warn\(|Please install", line)]
        assert noise == [], noise
    assert "Loss (base 2)" in evaluate.stderr + evaluate.stdout


def test_hydra_train_runs_from_a_yaml_config(lm_data, tmp_path):
    save = tmp_path / "ckpt_hydra"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tiny_lm.yaml").write_text(textwrap.dedent(f"""\
        task:
          _name: language_modeling
          data: {lm_data["data"]}
          tokens_per_sample: 32
          sample_break_mode: none
        model:
          _name: transformer_lm
          decoder_layers: 1
          decoder_embed_dim: 16
          decoder_ffn_embed_dim: 32
          decoder_attention_heads: 2
        criterion: cross_entropy
        optimizer:
          _name: adam
        lr_scheduler:
          _name: fixed
        optimization:
          max_update: 3
          lr: [0.005]
        dataset:
          max_tokens: 256
          num_workers: 0
        checkpoint:
          save_dir: {save}
        common:
          cpu: true
          log_format: simple
          log_interval: 1
        """))
    proc = run_cli("fairseq-hydra-train", "--config-dir", tmp_path / "conf", "--config-name", "tiny_lm",
                   f"hydra.run.dir={tmp_path / 'hydra_out'}", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r"num_updates 3\b", log), log[-3000:]
    assert (save / "checkpoint_last.pt").exists()
    assert "version_base parameter is not specified" not in log  # hydra-main-version-base
    # hydra-train-quiet-schema-and-chdir-notices
    assert "validated against ConfigStore schema" not in log and "no longer change working directory" not in log
