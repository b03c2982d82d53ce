"""mega_lm through the stock fairseq command-line tools on a tiny made-up corpus.

One module-scoped setup (preprocess + two tiny trainings) serves every test, to keep the number
of fairseq processes (~5-10 s of import each) small.
"""
import math
import random
import re

import pytest
import torch
from fairseq import checkpoint_utils, tasks

import mega_fairseq
from helpers import run_cli

WORDS = "the cat dog sat on a mat and ran to big small red house".split()
TINY_MEGA = ["--arch", "mega_lm", "--decoder-layers", "2", "--decoder-embed-dim", "16", "--decoder-hidden-dim", "24",
             "--decoder-z-dim", "8", "--decoder-n-dim", "4", "--decoder-ffn-embed-dim", "24"]
COMMON = ["--user-dir", mega_fairseq.USER_DIR, "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "256",
          "--no-progress-bar", "--log-interval", "1", "--log-format", "simple", "--num-workers", "0", "--seed", "3",
          "--cpu", "--no-epoch-checkpoints", "--save-interval-updates", "0"]


def write_corpus(out_dir):
    rng = random.Random(11)
    out_dir.mkdir(parents=True)
    for split, lines in (("train", 300), ("valid", 30), ("test", 60)):
        text = []
        for i in range(lines):
            if split == "test":  # whole sentences of >= 4 words: generation prefixes never hold an eos
                text.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))))
            else:  # an empty line every 10 lines (a document break) and a few one-word lines
                text.append("" if i % 10 == 9 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
        (out_dir / "{}.txt".format(split)).write_text("\n".join(text) + "\n")
    return out_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_cli")
    raw = write_corpus(root / "raw")
    data = root / "data-bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref",
            raw / "valid.txt", "--testpref", raw / "test.txt", "--destdir", data, "--workers", "1")
    chunked = run_cli(
        "fairseq-train", data, "--task", "mega_language_modeling", *TINY_MEGA, "--decoder-chunk-size", "8",
        "--variant-block-multiple-min", "1", "--variant-block-multiple-max", "3", "--sample-break-mode", "complete",
        "--valid-block", "splits:1", "--test-chunk-size", "8", "--criterion", "cross_entropy",
        "--max-epoch", "2", *COMMON, "--save-dir", root / "ckpt_chunked")
    adaptive = run_cli(
        "fairseq-train", data, "--task", "language_modeling", *TINY_MEGA, "--tokens-per-sample", "32",
        "--adaptive-input", "--adaptive-input-cutoff", "8", "--adaptive-softmax-cutoff", "8",
        "--adaptive-input-factor", "2", "--adaptive-softmax-factor", "2", "--tie-adaptive-weights",
        "--tie-adaptive-proj", "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp", "--max-update", "6", *COMMON,
        "--save-dir", root / "ckpt_adaptive")
    return {"root": root, "data": data, "chunked_log": chunked.stdout + chunked.stderr,
            "adaptive_log": adaptive.stdout + adaptive.stderr}


def losses(log, kind):
    return [float(v) for v in re.findall(r"\| {} .*?\| loss ([\d.]+)".format(kind), log)]


def test_cross_entropy_training_with_variant_blocks_and_streamed_validation(trained):
    log = trained["chunked_log"]
    train_losses, valid_losses = losses(log, "train"), losses(log, "valid")
    assert len(train_losses) == 2 and len(valid_losses) == 2, log[-3000:]
    assert valid_losses[1] < valid_losses[0]
    assert "streaming evaluation: pieces of 8 tokens" in log
    assert "training blocks: 1..3 x 8 tokens" in log


def test_adaptive_loss_trains_with_tied_adaptive_input_and_softmax(trained):
    log = trained["adaptive_log"]
    train_losses = [float(v) for v in re.findall(r"train_inner .*?loss=([\d.]+)", log)]
    assert len(train_losses) == 6, log[-3000:]
    assert all(math.isfinite(v) for v in train_losses)
    assert train_losses[-1] < train_losses[0]


def full_forward_base2_loss(checkpoint, data, split="test"):
    """Reference: one full-length forward over the whole split (one block), in process."""
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0].eval()
    task.load_dataset(split)
    stream = torch.cat([task.datasets[split].dataset.dataset[i] for i in range(len(task.datasets[split].dataset.dataset))])
    source = torch.cat([torch.tensor([task.dictionary.eos()]), stream[:-1]]).unsqueeze(0)
    model.decoder.stream_size = 0
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(source), log_probs=True)[0]
    nll = -lprobs.gather(-1, stream.unsqueeze(-1)).squeeze(-1)
    return nll.mean().item() / math.log(2), stream.numel()


def test_eval_lm_streams_a_long_block_and_equals_a_full_forward(trained):
    checkpoint = trained["root"] / "ckpt_chunked" / "checkpoint_last.pt"
    proc = run_cli("fairseq-eval-lm", trained["data"], "--user-dir", mega_fairseq.USER_DIR,
                   "--task", "mega_language_modeling", "--path", checkpoint, "--gen-subset", "test",
                   "--sample-break-mode", "complete", "--valid-block", "splits:1", "--test-chunk-size", "8",
                   "--chunk-nums", "2", "--max-tokens", "64", "--cpu")
    log = proc.stdout + proc.stderr
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log)
    assert match, log[-3000:]
    evaluated = int(re.search(r"Evaluated ([\d,]+) tokens", log).group(1).replace(",", ""))
    expected_loss, num_tokens = full_forward_base2_loss(checkpoint, trained["data"])
    # the block is ~7x the attention chunk and 4x the max tokens: scored whole, nothing dropped
    assert evaluated == num_tokens > 4 * 64
    assert float(match.group(1)) == pytest.approx(expected_loss, abs=1e-4)
    assert float(match.group(2)) == pytest.approx(2 ** expected_loss, abs=0.01)


def test_eval_lm_rejects_a_context_window_with_a_clear_message(trained):
    task = tasks.setup_task(_eval_task_cfg(trained["data"]))
    task.load_dataset("test")
    with pytest.raises(ValueError, match="--context-window 16 is not used with mega_language_modeling"):
        task.eval_lm_dataloader(task.dataset("test"), context_window=16)


def test_eval_lm_refuses_blocks_longer_than_an_unchunked_model_accepts(trained):
    task = tasks.setup_task(_eval_task_cfg(trained["data"]))
    task.load_dataset("test")
    with pytest.raises(ValueError, match="accepts at most 32 .*--valid-block"):
        task.eval_lm_dataloader(task.dataset("test"), max_positions=32)


def _eval_task_cfg(data):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq import options

    parser = options.get_eval_lm_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", mega_fairseq.USER_DIR, "--task",
                                                "mega_language_modeling", "--valid-block", "splits:1",
                                                "--sample-break-mode", "complete", "--path", "unused.pt"])
    return convert_namespace_to_omegaconf(args).task


@pytest.mark.parametrize("mode", [["--beam", "3"], ["--sampling", "--beam", "1", "--sampling-topk", "5"]])
def test_fairseq_generate_beam_and_sampling(trained, mode):
    checkpoint = trained["root"] / "ckpt_chunked" / "checkpoint_last.pt"
    proc = run_cli("fairseq-generate", trained["data"], "--user-dir", mega_fairseq.USER_DIR,
                   "--task", "language_modeling", "--path", checkpoint, "--gen-subset", "test",
                   "--sample-break-mode", "complete", "--tokens-per-sample", "16", "--prefix-size", "3",
                   "--max-len-b", "20", "--max-sentences", "4", "--cpu", "--seed", "2", *mode)
    hypotheses = re.findall(r"^H-\d+\t(-?[\d.]+)\t(.*)$", proc.stdout, flags=re.M)
    assert hypotheses, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(math.isfinite(float(score)) for score, _ in hypotheses)
    assert any(len(text.split()) > 2 for _, text in hypotheses)
    assert all(set(text.split()) <= set(WORDS) | {"<unk>"} for _, text in hypotheses)


def test_fairseq_interactive_continues_a_prompt(trained):
    checkpoint = trained["root"] / "ckpt_chunked" / "checkpoint_last.pt"
    proc = run_cli("fairseq-interactive", trained["data"], "--user-dir", mega_fairseq.USER_DIR,
                   "--task", "mega_language_modeling", "--path", checkpoint, "--sampling", "--sampling-topk", "3",
                   "--beam", "1", "--max-len-b", "12", "--cpu", "--seed", "4", stdin="the cat\nthe big red\n")
    hypotheses = re.findall(r"^H-(\d+)\t(-?[\d.]+)\t(.*)$", proc.stdout, flags=re.M)
    assert [h[0] for h in hypotheses] == ["0", "1"], proc.stdout[-2000:]
    assert hypotheses[0][2].startswith("the cat") and hypotheses[1][2].startswith("the big red")


def test_hydra_train_with_a_shipped_preset_yaml(trained, tmp_path):
    """fairseq-hydra-train picking config/model/mega_lm/mega_lm_enwik8_base.yaml, then a few overrides."""
    from mega_fairseq.models.arch_presets import CONFIG_DIR

    save = tmp_path / "ckpt"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "exp.yaml").write_text("\n".join([
        "defaults:", "  - model: mega_lm/mega_lm_enwik8_base", "  - _self_",
        "hydra:", "  searchpath:", "    - file://{}".format(CONFIG_DIR),
        "task:", "  _name: mega_language_modeling", "  data: {}".format(trained["data"]),
        "  sample_break_mode: complete", "  valid_block: splits:1",
        "model:", "  decoder_layers: 1", "  decoder_embed_dim: 16", "  decoder_hidden_dim: 24",
        "  decoder_ffn_embed_dim: 24", "  decoder_z_dim: 8", "  decoder_n_dim: 4", "  decoder_chunk_size: 8",
        "criterion: cross_entropy", "optimizer:", "  _name: adam", "lr_scheduler:", "  _name: fixed",
        "optimization:", "  max_update: 3", "  lr: [0.005]", "dataset:", "  max_tokens: 256", "  num_workers: 0",
        "checkpoint:", "  save_dir: {}".format(save), "common:", "  cpu: true", "  log_format: simple",
        "  log_interval: 1", "  user_dir: {}".format(mega_fairseq.USER_DIR), ""]))
    proc = run_cli("fairseq-hydra-train", "--config-dir", tmp_path / "conf", "--config-name", "exp",
                   "hydra.run.dir={}".format(tmp_path / "hydra_out"), cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert re.search(r"num_updates 3\b", log), log[-3000:]
    state = torch.load(save / "checkpoint_last.pt", weights_only=False)
    model_cfg = state["cfg"]["model"]
    assert model_cfg["_name"] == "mega_lm" and model_cfg["decoder_layers"] == 1
    # preset values that were not overridden reached the model
    assert model_cfg["dropout"] == 0.1 and model_cfg["activation_dropout"] == 0.0


def test_variable_training_blocks_beyond_an_unchunked_model_are_refused(trained):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(trained["data"]), "--user-dir", mega_fairseq.USER_DIR, "--task", "mega_language_modeling", *TINY_MEGA,
        "--tokens-per-sample", "32", "--variant-block-multiple-max", "3"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.build_model(cfg.model)
    with pytest.raises(ValueError, match=r"up to 3 x 32 = 96 tokens are longer than the model accepts \(32"):
        task.load_dataset("train")
