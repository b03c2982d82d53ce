"""Translation end to end with the example scripts: prepare (sentencepiece + fairseq-preprocess),
train (the official recipe, scaled down), fairseq-generate / fairseq-interactive with
sentencepiece, the hub interface, and a checkpoint in the official (fairseq 0.9-era) layout."""
import argparse
import math
import re
import subprocess

import pytest
import torch

import mega_fairseq  # noqa: F401  (registers the plugin in this process, as --user-dir does)
from helpers import PLUGIN_DIR, REPO_ROOT, run_cli

EXAMPLES = REPO_ROOT / "examples" / "translation"
TINY = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
        "--encoder-hidden-dim", "32", "--encoder-z-dim", "8", "--encoder-n-dim", "2",
        "--max-tokens", "1024", "--max-update", "12", "--warmup-updates", "4", "--total-num-update", "12",
        "--lr", "0.01", "--log-interval", "4", "--save-interval-updates", "0", "--no-epoch-checkpoints"]
GEN = ["--beam", "5", "--lenpen", "0.5", "--nbest", "2", "--bpe", "sentencepiece", "--batch-size", "8",
       "--scoring", "sacrebleu", "--cpu", "-s", "en", "-t", "zed"]

#: tiny models decode step by step: extra threads only add contention on a shared machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_script(script, *args, env=None):
    env_all = {"SRC": "en", "TGT": "zed", "PYTHON": str(REPO_ROOT / ".venv" / "bin" / "python")}
    env_all.update(env or {})
    import os
    import sys

    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env_all)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env["PATH"]
    full_env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=600)
    assert proc.returncode == 0, "{} failed\n{}\n{}".format(script, proc.stdout[-3000:], proc.stderr[-5000:])
    return proc.stdout + proc.stderr


def official_layout_checkpoint(ours_path, out_path, data_dir):
    """Rewrite one of our checkpoints in the layout the official Mega code writes (see the
    reference README): argparse args with the official quirks, no 'cfg'."""
    ours = torch.load(ours_path, map_location="cpu", weights_only=False)
    model_cfg = ours["cfg"]["model"]
    model_args = {k: model_cfg[k] for k in model_cfg if not k.startswith("_") and model_cfg[k] is not None}
    args = argparse.Namespace(
        arch="mega_wmt_en_de", task="translation", data=str(data_dir), source_lang="en", target_lang="zed",
        left_pad_source="True", left_pad_target="False", criterion="label_smoothed_cross_entropy",
        label_smoothing=0.1, optimizer="adam", adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.05,
        lr_scheduler="linear_decay", lr=[0.001], warmup_updates=4000, warmup_init_lr=1e-7, warmup_power=1,
        end_learning_rate=0.0, total_num_update=500000, max_update=500000, max_tokens=8192,
        eval_bleu=True, eval_bleu_args=None, eval_bleu_detok_args=None, eval_bleu_detok="space",
        eval_bleu_remove_bpe=None, eval_tokenized_bleu=True, seed=1, ddp_backend="c10d", fp16=False,
        **model_args,
    )
    args.max_source_positions = 1024
    args.max_target_positions = 1024
    state = {
        "args": args,
        "model": ours["model"],
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 3.5}, "num_updates": 12}],
        "extra_state": {"train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
                        "val_loss": 3.5, "best": 3.5, "metrics": {}, "previous_training_time": 1.0},
        "last_optimizer_state": None,
    }
    torch.save(state, out_path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_pipeline")
    import sys

    subprocess.run([sys.executable, str(EXAMPLES / "make_demo_corpus.py"), str(root / "raw"), "--train", "400",
                    "--valid", "16", "--test", "12"], check=True, capture_output=True)
    prep_log = run_script("prepare.sh", root / "raw", root / "prep", env={"VOCAB_SIZE": "100", "WORKERS": "1"})
    train_log = run_script("train.sh", root / "prep" / "data-bin", root / "ckpt", *TINY, env={"CPU": "1"})
    data = root / "prep" / "data-bin"
    spm = root / "prep" / "spm.model"
    ours = root / "ckpt" / "checkpoint_last.pt"
    official = root / "official" / "checkpoint_official.pt"
    official.parent.mkdir()
    official_layout_checkpoint(ours, official, data)
    gen = {}
    for name, path in (("ours", ours), ("official", official)):
        gen[name] = run_cli("fairseq-generate", data, "--user-dir", PLUGIN_DIR, "--path", path,
                            "--sentencepiece-model", spm, *GEN).stdout
    return dict(root=root, data=data, spm=spm, ours=ours, official=official, gen=gen,
                prep_log=prep_log, train_log=train_log)


def hypotheses(generate_output):
    """{sentence id: [(hypothesis tokens, positional scores), ...]} from H-/P- lines."""
    result = {}
    lines = generate_output.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^H-(\d+)\t(\S+)\t(.*)$", line)
        if match:
            p_line = lines[i + 2] if lines[i + 1].startswith("D-") else lines[i + 1]
            assert p_line.startswith("P-" + match.group(1))
            scores = [float(x) for x in p_line.split("\t")[1].split()]
            result.setdefault(int(match.group(1)), []).append((match.group(3), scores))
    return result


def test_prepare_and_train_scripts_run_the_recipe(pipeline):
    assert "--lr-scheduler linear_decay" in pipeline["train_log"]
    assert "--truncation-length 0" in pipeline["train_log"]  # the official README's value must train
    assert re.search(r"num_updates 12\b", pipeline["train_log"])
    assert re.search(r"\| bleu [0-9.]+", pipeline["train_log"]), "validation BLEU (--eval-bleu) missing"
    assert pipeline["ours"].exists()


def test_generate_beam_nbest_lenpen_sacrebleu(pipeline):
    out = pipeline["gen"]["ours"]
    hyps = hypotheses(out)
    assert sorted(hyps) == list(range(12))
    assert all(len(h) == 2 for h in hyps.values()), "--nbest 2"
    assert re.search(r"Generate test with beam=5: BLEU = [0-9.]+", out)
    # --bpe sentencepiece: D- lines are detokenized text (no '▁' pieces)
    detok = [line.split("\t")[2] for line in out.splitlines() if line.startswith("D-")]
    assert detok and not any("\u2581" in d for d in detok)


def test_official_layout_checkpoint_generates_the_same(pipeline):
    assert hypotheses(pipeline["gen"]["official"]) == hypotheses(pipeline["gen"]["ours"])


def test_generated_scores_match_the_in_memory_model(pipeline):
    """Teacher-forced log-probs of the official-layout checkpoint's hypotheses == P- scores."""
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(pipeline["official"])], arg_overrides={"data": str(pipeline["data"]), "eval_bleu": False})
    model = models[0].eval()
    task.load_dataset("test")
    dataset = task.dataset("test")
    dictionary = task.target_dictionary
    for sid, hyps in hypotheses(pipeline["gen"]["official"]).items():
        src = dataset[sid]["source"].unsqueeze(0)
        for text, scores in hyps:
            tokens = dictionary.encode_line(text, add_if_not_exist=False).long().unsqueeze(0)
            prev = torch.cat([tokens.new_full((1, 1), dictionary.eos()), tokens[:, :-1]], dim=1)
            with torch.no_grad():
                out = model(src, torch.tensor([src.size(1)]), prev)
                lprobs = model.get_normalized_probs(out, log_probs=True)[0]
            expected = lprobs.gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1) / math.log(2)
            assert torch.allclose(expected, torch.tensor(scores), atol=2e-4), (sid, text)


def test_interactive_with_sentencepiece_and_an_empty_line(pipeline):
    raw = (pipeline["root"] / "raw" / "test.en").read_text().splitlines()[:2]
    proc = run_cli("fairseq-interactive", pipeline["data"], "--user-dir", PLUGIN_DIR, "--path", pipeline["ours"],
                   "--beam", "5", "--bpe", "sentencepiece", "--sentencepiece-model", pipeline["spm"], "--cpu",
                   "-s", "en", "-t", "zed", stdin="\n".join([raw[0], "", raw[1]]) + "\n")
    detok = [line for line in proc.stdout.splitlines() if line.startswith("D-")]
    assert [line.split("\t")[0] for line in detok] == ["D-0", "D-1", "D-2"]
    assert not any("\u2581" in line for line in detok)


@pytest.mark.parametrize("which", ["ours", "official"])
def test_hub_interface_translates(pipeline, which):
    from mega_fairseq.models.mega import MegaModel

    path = pipeline[which]
    hub = MegaModel.from_pretrained(str(path.parent), checkpoint_file=path.name,
                                    data_name_or_path=str(pipeline["data"]), bpe="sentencepiece",
                                    sentencepiece_model=str(pipeline["spm"]), source_lang="en", target_lang="zed")
    sentence = (pipeline["root"] / "raw" / "test.en").read_text().splitlines()[0]
    translation = hub.translate(sentence, beam=5)
    assert isinstance(translation, str) and "\u2581" not in translation
    assert hub.translate([sentence, sentence], beam=2) == [hub.translate(sentence, beam=2)] * 2
    # same model and search settings as fairseq-generate (batched there): the same best hypothesis
    same_search = hub.translate(sentence, beam=5, lenpen=0.5)
    gen_line = [line for line in pipeline["gen"][which].splitlines() if line.startswith("D-0\t")][0]
    assert same_search == gen_line.split("\t")[2]


def test_source_longer_than_max_positions_is_fairseqs_usual_error(pipeline):
    proc = run_cli("fairseq-generate", pipeline["data"], "--user-dir", PLUGIN_DIR, "--path", pipeline["ours"],
                   "--max-source-positions", "4", "--cpu", "-s", "en", "-t", "zed", check=False)
    assert proc.returncode != 0
    assert "skip-invalid-size-inputs-valid-test" in proc.stderr + proc.stdout


def test_dictionary_that_does_not_match_the_checkpoint_is_a_clear_error_in_generate(pipeline, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in pipeline["data"].iterdir():
        (data / f.name).symlink_to(f)
    for lang in ("en", "zed"):
        (data / "dict.{}.txt".format(lang)).unlink()
        (data / "dict.{}.txt".format(lang)).write_text(
            (pipeline["data"] / "dict.en.txt").read_text() + "extra_symbol 1\n")
    proc = run_cli("fairseq-generate", data, "--user-dir", PLUGIN_DIR, "--path", pipeline["ours"],
                   "--cpu", "-s", "en", "-t", "zed", check=False)
    assert proc.returncode != 0
    assert "does not match the checkpoint" in proc.stderr + proc.stdout


def test_fairseq_hydra_train_with_the_preset_yaml(pipeline, tmp_path):
    """``fairseq-hydra-train`` picks config/model/mega/mega_wmt_en_de.yaml and trains/saves."""
    save = tmp_path / "ckpt"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mt.yaml").write_text("\n".join([
        "defaults:", "  - model: mega/mega_wmt_en_de", "  - _self_",
        "hydra:", "  searchpath:", "    - file://{}".format(PLUGIN_DIR / "config"),
        "task:", "  _name: translation", "  data: {}".format(pipeline["data"]), "  source_lang: en",
        "  target_lang: zed",
        "model:", "  encoder_layers: 1", "  decoder_layers: 1", "  encoder_embed_dim: 16", "  encoder_hidden_dim: 32",
        "  encoder_z_dim: 8", "  encoder_n_dim: 2", "  share_all_embeddings: true",
        "criterion:", "  _name: label_smoothed_cross_entropy", "  label_smoothing: 0.1",
        "optimizer:", "  _name: adam",
        "lr_scheduler:", "  _name: linear_decay", "  warmup_updates: 1", "  total_num_update: 2",
        "optimization:", "  max_update: 2", "  lr: [0.001]",
        "dataset:", "  max_tokens: 512", "  num_workers: 0",
        "checkpoint:", "  save_dir: {}".format(save), "  no_epoch_checkpoints: true",
        "common:", "  cpu: true", "  log_format: simple", "  log_interval: 1",
        "  user_dir: {}".format(PLUGIN_DIR),
    ]) + "\n")
    proc = run_cli("fairseq-hydra-train", "--config-dir", conf, "--config-name", "mt",
                   "hydra.run.dir={}".format(tmp_path / "hydra_out"), cwd=tmp_path)
    assert re.search(r"num_updates 2\b", proc.stdout + proc.stderr)
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    model_cfg = state["cfg"]["model"]
    assert model_cfg["_name"] == "mega"
    assert model_cfg["attention_dropout"] == 0.1 and model_cfg["activation_dropout"] == 0.1  # the preset's
    assert state["model"]["encoder.embed_tokens.weight"].shape[1] == 16
    assert state["model"]["decoder.layers.0.cross_attn.k_proj.weight"].shape == (8, 16)


def test_evaluate_script_prints_the_generation_speed_and_sacrebleu(pipeline):
    out = run_script("evaluate.sh", pipeline["data"], pipeline["ours"], pipeline["spm"], pipeline["root"] / "raw" / "test.zed",
                     "--cpu", "--batch-size", "8")
    # fairseq-generate's speed line used to be thrown away with its log
    assert re.search(r"^Translated 12 sentences \([\d,]+ tokens\) in [\d.]+s \([\d.]+ sentences/s, [\d.]+ tokens/s\)$",
                     out, flags=re.M), out[-2000:]
    assert re.search(r"Generate test with beam=5: BLEU = [0-9.]+", out)
    assert re.search(r"^\d+\.\d\d$", out, flags=re.M)  # sacrebleu -b -w 2
