"""Two nodes x two processes, simulated on one machine, on fairseq's own distributed engine.

Two launches ("node 0" and "node 1") of ``torchrun --nnodes 2 --nproc-per-node 2 --node-rank
{0,1} --master-addr 127.0.0.1 --master-port PORT fairseq-train ...`` (torch's standard launcher,
rendezvous over TCP at 127.0.0.1:PORT): each starts two ``fairseq-train`` workers; fairseq reads
the launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``_infer_torch_distributed_launch_init``)
and trains one model over world size 4 (gloo, CPU). Each update then averages the gradients of
four batches, exactly what one process does with ``--update-freq 4``: the logged per-update
losses must agree.

Why not ``fairseq-train --distributed-init-method tcp://... --distributed-rank 0/2`` per node on
CPU: ``call_main`` spawns ``min(#GPUs or world size, world size)`` workers per launch (it never
reads ``--distributed-num-procs``), so a CPU launch with world size 4 starts 4 workers, not 2.
On GPU nodes that command starts one worker per GPU (see the README, "Training on many GPUs /
nodes"); the one-process-per-rank TCP form is covered by ``test_translation_distributed.py``.
"""
import os
import subprocess
import sys

import pytest

from e2e.test_translation_distributed import MODEL, data  # noqa: F401 (data: fixture)
from helpers import BIN_DIR, finish_all, free_port, run_cli, train_losses as losses

NODES, PROCS_PER_NODE = 2, 2
WORLD_SIZE = NODES * PROCS_PER_NODE
TOLERANCE = 2e-3  # losses are printed with 3 decimals; gradient sums differ in the order of addition


@pytest.fixture(scope="module")
def update_freq_4_losses(data):  # noqa: F811
    single = run_cli("fairseq-train", data, *MODEL, "--update-freq", str(WORLD_SIZE))
    one = losses(single.stdout + single.stderr)
    assert len(one) == 6 and one[-1] < one[0], one
    return one


def test_two_nodes_of_two_processes_match_one_process_with_update_freq_4(data, update_freq_4_losses):  # noqa: F811
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    nodes = []
    for node_rank in range(NODES):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--nproc-per-node",
               str(PROCS_PER_NODE), "--node-rank", str(node_rank), "--master-addr", "127.0.0.1",
               "--master-port", str(port), str(BIN_DIR / "fairseq-train"), str(data), *MODEL,
               "--distributed-backend", "gloo"]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    logs = finish_all(nodes, timeout=400)
    everything = "".join(logs)
    for rank in range(WORLD_SIZE):
        assert "distributed init (rank {})".format(rank) in everything, everything[-3000:]
    assert "world_size': 4" in everything or "distributed_world_size': 4" in everything, everything[-3000:]
    distributed = losses(logs[0])  # rank 0 (node 0) logs the training progress
    assert len(distributed) == len(update_freq_4_losses) == 6, (distributed, update_freq_4_losses)
    for a, b in zip(distributed, update_freq_4_losses):
        assert abs(a - b) <= TOLERANCE, (distributed, update_freq_4_losses)
    print("losses, 2 nodes x 2 processes:", distributed, "1 process --update-freq 4:", update_freq_4_losses)
