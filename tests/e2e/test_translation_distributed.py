"""Scale-out: ``fairseq-train --distributed-world-size 2`` on CPU (gloo) trains ``mega`` and
matches one process with ``--update-freq 2`` (same batches per update, same loss)."""
import os
import subprocess
import sys

import pytest

from helpers import BIN_DIR, PLUGIN_DIR, finish_all, free_port, run_cli, train_losses as losses
from helpers import write_translation_corpus

MODEL = ["--arch", "mega", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
         "--encoder-hidden-dim", "32", "--encoder-z-dim", "8", "--encoder-n-dim", "2", "--share-all-embeddings",
         "--dropout", "0", "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "linear_decay",
         "--warmup-updates", "2", "--total-num-update", "6", "--max-update", "6", "--max-tokens", "200",
         "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--seed", "7", "--cpu",
         "--log-format", "simple", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
         "--no-save", "--disable-validation", "--required-batch-size-multiple", "1", "--user-dir", str(PLUGIN_DIR)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_dist")
    raw = write_translation_corpus(root / "raw")
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
            "--validpref", raw / "valid",
            "--destdir", root / "bin", "--joined-dictionary", "--workers", "1")
    return root / "bin"


@pytest.fixture(scope="module")
def single_process_losses(data):
    single = run_cli("fairseq-train", data, *MODEL, "--update-freq", "2")
    one = losses(single.stdout + single.stderr)
    assert len(one) == 6 and one[-1] < one[0], one  # it trains
    return one


def test_plain_distributed_world_size_2_on_cpu_matches_update_freq_2(data, single_process_losses):
    # exactly what a user types: fairseq spawns the two CPU workers itself (gloo, default DDP backend)
    proc = run_cli("fairseq-train", data, *MODEL, "--distributed-world-size", "2",
                   env_extra={"OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert "distributed init (rank 1)" in log, log[-3000:]
    distributed = losses(log)
    assert len(distributed) == 6, log[-3000:]
    for a, b in zip(distributed, single_process_losses):
        assert abs(a - b) <= 2e-3, (distributed, single_process_losses)


def test_two_gloo_workers_match_one_process_with_update_freq_2(data, single_process_losses):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    workers = []
    for rank in range(2):
        cmd = [str(BIN_DIR / "fairseq-train"), str(data), *MODEL, "--distributed-world-size", "2",
               "--distributed-rank", str(rank), "--distributed-backend", "gloo", "--distributed-no-spawn",
               # one process per rank started by hand (as a cluster launcher does), with fairseq's
               # own gradient all-reduce instead of torch DDP
               "--ddp-backend", "legacy_ddp",
               "--distributed-init-method", "tcp://127.0.0.1:{}".format(port), "--device-id", "0"]
        workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    logs = finish_all(workers, timeout=300)
    assert "distributed init (rank 1)" in logs[0] + logs[1]
    distributed, one = losses(logs[0]), single_process_losses
    assert len(distributed) == len(one) == 6, (distributed, one)
    for a, b in zip(distributed, one):
        assert abs(a - b) <= 2e-3, (distributed, one)
    print("losses, 2 workers:", distributed, "1 process --update-freq 2:", one)
