"""The patched fairseq stack end to end on a tiny made-up translation task (stock transformer):
preprocess, train, resume from checkpoint_last.pt, generate, interactive, safe checkpoint loading."""
import pickle
import re

import pytest
import torch

from helpers import run_cli
from helpers import write_translation_corpus

TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-all-embeddings", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "400",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--no-progress-bar", "--log-interval", "1", "--log-format", "simple", "--num-workers", "0",
    "--seed", "3", "--cpu",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack_mt")
    raw = write_translation_corpus(root / "raw")
    data = root / "data-bin"
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
            "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
            "--destdir", data, "--joined-dictionary", "--workers", "1")
    save = root / "checkpoints"
    first = run_cli("fairseq-train", data, *TINY_TRANSFORMER, "--max-update", "4",
                    "--save-dir", save)
    return {"root": root, "raw": raw, "data": data, "save": save, "first_log": first.stdout + first.stderr}


def test_preprocess_writes_binarized_splits_and_a_joined_dictionary(trained):
    data = trained["data"]
    for split in ("train", "valid", "test"):
        for lang in ("src", "tgt"):
            assert (data / f"{split}.src-tgt.{lang}.bin").stat().st_size > 0
            assert (data / f"{split}.src-tgt.{lang}.idx").exists()
    assert (data / "dict.src.txt").read_text() == (data / "dict.tgt.txt").read_text()


def test_train_saves_last_and_best_checkpoints(trained):
    log = trained["first_log"]
    assert re.search(r"num_updates 4\b", log), log[-2000:]
    assert (trained["save"] / "checkpoint_last.pt").exists()
    assert (trained["save"] / "checkpoint_best.pt").exists()


def test_resume_from_checkpoint_last_continues_the_update_count(trained, tmp_path):
    save = tmp_path / "ckpt"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes((trained["save"] / "checkpoint_last.pt").read_bytes())
    proc = run_cli("fairseq-train", trained["data"], *TINY_TRANSFORMER, "--max-update", "6",
                   "--save-dir", save)
    log = proc.stdout + proc.stderr
    assert re.search(r"[Ll]oaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", log), log[-3000:]
    assert re.search(r"num_updates 6\b", log), log[-2000:]
    state = torch.load(save / "checkpoint_last.pt", weights_only=False)  # our own file
    assert state["optimizer_history"][-1]["num_updates"] == 6


def test_generate_translates_the_test_set(trained):
    proc = run_cli("fairseq-generate", trained["data"], "--path", trained["save"] / "checkpoint_best.pt",
                   "--beam", "3", "--batch-size", "8", "--cpu", "--remove-bpe")
    hyps = [l for l in proc.stdout.splitlines() if l.startswith("H-")]
    assert len(hyps) == 10
    assert re.search(r"BLEU4? = ", proc.stdout)


def test_interactive_translates_stdin(trained):
    proc = run_cli("fairseq-interactive", trained["data"], "--path", trained["save"] / "checkpoint_best.pt",
                   "--source-lang", "src", "--target-lang", "tgt", "--beam", "2", "--cpu",
                   stdin="red cat runs\nsmall dog sleeps\n")
    hyps = [l for l in proc.stdout.splitlines() if l.startswith("H-")]
    assert [h.split("\t")[0] for h in hyps] == ["H-0", "H-1"]


def test_checkpoint_loads_through_the_allowlisted_weights_only_path(trained, tmp_path):
    from fairseq import checkpoint_utils

    path = trained["save"] / "checkpoint_last.pt"
    # plain weights_only loading (torch's default) must reject it: the allowlist is what makes it work
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["cfg"]["model"].arch == "transformer"  # an argparse.Namespace: allowlisted
    assert any(k.startswith("encoder.layers.0.") for k in state["model"])
    # the EMA loader takes the same safe path (a checkpoint trained with --store-ema keeps the
    # averaged weights in extra_state["ema"])
    raw = torch.load(path, weights_only=False)  # our own file, as fairseq-train wrote it
    raw["extra_state"]["ema"] = {k: v * 0.5 for k, v in raw["model"].items()}
    torch.save(raw, tmp_path / "with_ema.pt")
    ema_state = checkpoint_utils.load_ema_from_checkpoint(str(tmp_path / "with_ema.pt"))
    key = next(iter(state["model"]))
    assert torch.equal(ema_state["model"][key], state["model"][key] * 0.5)


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoint_loading_refuses_arbitrary_pickled_objects(tmp_path):
    from fairseq import checkpoint_utils

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": None, "payload": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_official_layout_checkpoint_with_eval_bleu_args_none_loads_through_fairseqs_loader(trained, tmp_path):
    # the official Mega code writes the run's argparse Namespace under "args" (no "cfg"), with
    # eval_bleu=True and eval_bleu_args=None; fairseq's own loader (fairseq-validate, scripts) must load it
    from fairseq import checkpoint_utils

    state = torch.load(trained["save"] / "checkpoint_last.pt", weights_only=False)  # our own file
    args = state["cfg"]["model"]
    args.eval_bleu, args.eval_bleu_args, args.eval_bleu_detok_args, args.eval_bleu_detok = True, None, None, "space"
    state["args"], state["cfg"] = args, None
    torch.save(state, tmp_path / "official_layout.pt")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tmp_path / "official_layout.pt")], arg_overrides={"data": str(trained["data"])})
    assert cfg.task.eval_bleu and cfg.task.eval_bleu_args is None
    assert task.sequence_generator is not None  # built with the default generation arguments
    assert torch.equal(models[0].state_dict()["encoder.embed_tokens.weight"], state["model"]["encoder.embed_tokens.weight"])


def test_fairseq_score_sacrebleu_scores_a_detokenized_file(tmp_path):
    refs = ["the cat sat on the mat .", "a dog ran to the big house ."]
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    (tmp_path / "sys.txt").write_text("\n".join(refs) + "\n")
    proc = run_cli("fairseq-score", "--sacrebleu", "-s", tmp_path / "sys.txt", "-r", tmp_path / "ref.txt")
    assert re.search(r"BLEU = 100\.00 ", proc.stdout), proc.stdout + proc.stderr[-2000:]
    (tmp_path / "sys.txt").write_text("the cat sat on a mat .\na dog ran to the house .\n")
    worse = run_cli("fairseq-score", "--sacrebleu", "-s", tmp_path / "sys.txt", "-r", tmp_path / "ref.txt")
    assert 0 < float(re.search(r"BLEU = ([\d.]+) ", worse.stdout).group(1)) < 100
