"""Checkpoint safety patches (checkpoint-* and train-finished-job-does-nothing in the patch set):
atomic files, one live trainer per --save-dir, resume from a corrupted checkpoint_last.pt, a full
disk, a finished job re-run. The random-kill test is tests/e2e/test_checkpoint_kills.py."""
import hashlib
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import run_cli, write_lm_corpus

TINY_LM = [
    "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
    "--decoder-embed-dim", "16", "--decoder-input-dim", "16", "--decoder-output-dim", "16",
    "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2", "--tokens-per-sample", "16",
    "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "128",
    "--save-interval-updates", "2", "--no-epoch-checkpoints", "--no-progress-bar", "--log-interval", "1",
    "--log-format", "simple", "--num-workers", "0", "--seed", "5", "--cpu",
]
LOADED = re.compile(r"Loaded checkpoint (\S+) \(epoch \d+ @ (\d+) updates\)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LM trained for 4 updates, saved at 2 and 4 (checkpoint_1_2.pt, checkpoint_1_4.pt, checkpoint_last.pt)."""
    root = tmp_path_factory.mktemp("ckpt_safety")
    raw = write_lm_corpus(root / "raw")
    data = root / "data-bin"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref", raw / "valid.txt",
            "--destdir", data, "--workers", "1")
    save = root / "save"
    run_cli("fairseq-train", data, *TINY_LM, "--max-update", "4", "--save-dir", save)
    return {"data": data, "save": save}


def fresh_copy(trained, tmp_path):
    save = tmp_path / "save"
    shutil.copytree(trained["save"], save)
    return save


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_files_appear_complete_and_no_temporary_file_is_left(trained):
    from fairseq import checkpoint_utils

    names = sorted(os.listdir(trained["save"]))
    assert {"checkpoint_1_2.pt", "checkpoint_1_4.pt", "checkpoint_last.pt"} <= set(names)
    assert not [n for n in names if ".tmp" in n], names
    # the lock file is left empty when the trainer ends normally
    assert (trained["save"] / "fairseq-train.lock").read_text() == ""
    for name in ("checkpoint_1_4.pt", "checkpoint_last.pt"):
        state = checkpoint_utils.load_checkpoint_to_cpu(str(trained["save"] / name))
        assert state["optimizer_history"][-1]["num_updates"] == 4


def test_a_finished_job_rerun_does_nothing_and_says_so(trained, tmp_path):
    save = fresh_copy(trained, tmp_path)
    before = {n: sha(save / n) for n in ("checkpoint_last.pt", "checkpoint_1_4.pt")}
    proc = run_cli("fairseq-train", trained["data"], *TINY_LM, "--max-update", "4", "--save-dir", save)
    log = proc.stdout + proc.stderr
    assert "nothing to do: the checkpoint is already at 4 updates (--max-update 4)" in log
    assert "Saved checkpoint" not in log and "num_updates=5" not in log
    assert {n: sha(save / n) for n in before} == before


def test_resume_from_a_corrupted_checkpoint_last_falls_back_to_the_newest_that_loads(trained, tmp_path):
    save = fresh_copy(trained, tmp_path)
    last = save / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torn in the middle
    proc = run_cli("fairseq-train", trained["data"], *TINY_LM, "--max-update", "6", "--save-dir", save)
    log = proc.stdout + proc.stderr
    warning = re.search(r"WARNING .*checkpoint_last\.pt cannot be loaded \(.*\); resuming from (\S+), the newest", log)
    # the save at update 4 wrote checkpoint_1_4.pt, then its copies checkpoint_best.pt and checkpoint_last.pt
    assert warning and os.path.basename(warning.group(1)) == "checkpoint_best.pt", log[-3000:]
    loaded = LOADED.search(log)
    assert loaded.group(1) == warning.group(1) and loaded.group(2) == "4"
    assert "num_updates=5" in log and "num_updates=1," not in log  # continued, not restarted


def test_resume_when_no_checkpoint_loads_stops_with_the_way_forward(trained, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    (save / "checkpoint_last.pt").write_bytes(b"\0" * 100)
    proc = run_cli("fairseq-train", trained["data"], *TINY_LM, "--max-update", "6", "--save-dir", save, check=False)
    assert proc.returncode != 0
    assert re.search(r"checkpoint_last\.pt cannot be loaded \(.*\) and no other checkpoint in \S+ loads\. Delete it "
                     r"to train from scratch, or pass --restore-file", proc.stderr), proc.stderr[-2000:]


def hold_lock_in_child(save):
    """A live process holding the --save-dir lock; returns the Popen (it prints 'locked' once it holds it)."""
    code = ("import sys, time; from fairseq import checkpoint_utils as c; c.lock_save_dir(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(save)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_live_trainer_on_the_save_dir_is_refused(trained, tmp_path):
    save = fresh_copy(trained, tmp_path)
    before = sha(save / "checkpoint_last.pt")
    holder = hold_lock_in_child(save)
    try:
        assert (save / "fairseq-train.lock").read_text().startswith("pid={} ".format(holder.pid))
        proc = run_cli("fairseq-train", trained["data"], *TINY_LM, "--max-update", "6", "--save-dir", save,
                       check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    assert re.search(r"--save-dir \S+ is in use by another trainer \(PID {} on \S+; lock file \S+fairseq-train\.lock\)"
                     .format(holder.pid), proc.stderr), proc.stderr[-2000:]
    assert "Loaded checkpoint" not in proc.stdout + proc.stderr
    assert sha(save / "checkpoint_last.pt") == before


def test_the_lock_of_a_dead_trainer_is_taken_over_with_a_warning(tmp_path, caplog):
    from fairseq import checkpoint_utils

    holder = hold_lock_in_child(tmp_path)
    with pytest.raises(RuntimeError, match=r"in use by another trainer \(PID {} ".format(holder.pid)):
        checkpoint_utils.lock_save_dir(str(tmp_path))
    holder.kill()
    holder.wait()
    (tmp_path / ".checkpoint_last.pt.tmp-{}".format(holder.pid)).write_bytes(b"partial")  # left by the dead one
    with caplog.at_level(logging.WARNING):
        checkpoint_utils.lock_save_dir(str(tmp_path))
    try:
        assert "from trainer PID {} on".format(holder.pid) in caplog.text and "no longer runs" in caplog.text
        assert (tmp_path / "fairseq-train.lock").read_text().startswith("pid={} ".format(os.getpid()))
        assert not (tmp_path / ".checkpoint_last.pt.tmp-{}".format(holder.pid)).exists()
    finally:
        checkpoint_utils.unlock_save_dir(str(tmp_path))


def limit_file_size(limit_bytes):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return preexec


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    # the writer itself, on a file-size limit (a full disk fails the same way: an OSError mid-write)
    target = tmp_path / "checkpoint_last.pt"
    torch.save({"old": torch.zeros(3)}, target)
    before = sha(target)
    code = ("import sys, torch; from fairseq import checkpoint_utils as c; "
            "c.torch_persistent_save({'new': torch.zeros(100000)}, sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                          preexec_fn=limit_file_size(20000))
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"OSError: \[Errno \d+\] could not write checkpoint \S+checkpoint_last\.pt \(.*\)\. The previous "
                    r"checkpoints in \S+ are intact", last_line), proc.stderr[-2000:]
    assert sha(target) == before and sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]


def test_training_on_a_full_disk_stops_with_a_clear_message_and_keeps_the_previous_checkpoints(trained, tmp_path):
    save = fresh_copy(trained, tmp_path)
    before = {n: sha(save / n) for n in os.listdir(save) if n.endswith(".pt")}
    size = (save / "checkpoint_last.pt").stat().st_size
    env = dict(os.environ, OMP_NUM_THREADS="1")
    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    proc = subprocess.run([exe, str(trained["data"]), *TINY_LM, "--max-update", "6", "--save-dir", str(save)],
                          capture_output=True, text=True, env=env, preexec_fn=limit_file_size(size // 2), timeout=600)
    assert proc.returncode != 0
    assert re.search(r"could not write checkpoint \S+checkpoint_1_6\.pt \(.*\)\. The previous checkpoints in \S+ are "
                     r"intact", proc.stderr), proc.stderr[-2000:]
    assert {n: sha(save / n) for n in before} == before
    assert not [n for n in os.listdir(save) if ".tmp" in n or n == "checkpoint_1_6.pt"]


def test_loading_a_truncated_checkpoint_names_the_file_and_the_way_forward(trained, tmp_path):
    # fairseq-generate / fairseq-eval-lm --path, scripts: one message instead of a deep zip-reader error
    from fairseq import checkpoint_utils

    torn = tmp_path / "checkpoint_last.pt"
    data = (trained["save"] / "checkpoint_last.pt").read_bytes()
    torn.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeError, match=r"could not read checkpoint \S+checkpoint_last\.pt: the file is incomplete "
                                           r"or corrupted \(.*\)\. Use another checkpoint of the same run"):
        checkpoint_utils.load_checkpoint_to_cpu(str(torn))


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from fairseq import checkpoint_utils

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING):
        checkpoint_utils.lock_save_dir(str(tmp_path))  # no error: training goes on, unprotected
    assert "cannot lock" in caplog.text and "would not be detected" in caplog.text
    assert str(tmp_path) not in checkpoint_utils._held_save_dir_locks
