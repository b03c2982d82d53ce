"""Driver of ``test_checkpoint_kills.py``: kill a trainer at random points of its checkpoint saves.

``python checkpoint_kill_driver.py WORKDIR KILLS SEED`` prints one JSON object (the test checks it).
fairseq is imported once; the trainers, the reader and the preprocessing run in forked children
(no ~5 s import per kill), each logging to its own file in WORKDIR.

- A tiny ``transformer_lm`` saves after every update (``checkpoint_1_<n>.pt``, then the atomic
  copies ``checkpoint_last.pt`` and, after a validation, ``checkpoint_best.pt``).
- Each of the KILLS cycles starts a trainer on the same ``--save-dir`` (it resumes from
  ``checkpoint_last.pt``), waits for a random number of save events (a temporary file appearing,
  ``checkpoint_last.pt`` being replaced) and sends SIGKILL: even cycles while a temporary
  checkpoint file is being written, odd cycles after a random delay of 0-40 ms.
- Meanwhile a reader process loads ``checkpoint_last.pt`` with fairseq's loader in a loop.

Reported: per restart, the update count of the last save the previous trainer logged as complete
and the update count the new one resumed from; the reader's successful loads and failures; the
number of resumes that had to fall back from a corrupted ``checkpoint_last.pt``.
"""
import json
import logging
import os
import random
import re
import signal
import sys
import time
import traceback
from pathlib import Path

WORDS = "the cat dog sat on a mat and ran to big small red house".split()
TRAIN_FLAGS = [
    "--task", "language_modeling", "--arch", "transformer_lm", "--decoder-layers", "1",
    "--decoder-embed-dim", "16", "--decoder-input-dim", "16", "--decoder-output-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
    "--tokens-per-sample", "16", "--sample-break-mode", "none", "--optimizer", "adam", "--lr", "0.001",
    "--max-tokens", "64", "--max-update", "100000", "--save-interval-updates", "1", "--keep-interval-updates", "2",
    "--no-epoch-checkpoints", "--validate-interval-updates", "3", "--no-progress-bar", "--log-interval", "1",
    "--log-format", "simple", "--num-workers", "0", "--seed", "7", "--cpu",
]
SAVED = re.compile(r"Saved checkpoint .*? \(epoch \d+ @ (\d+) updates")
LOADED = re.compile(r"Loaded checkpoint .*? \(epoch \d+ @ (\d+) updates\)")


def writing_a_checkpoint(save: Path, pid: int) -> bool:
    """Whether trainer ``pid`` has a temporary checkpoint file open: the patched fairseq writes
    ``.<name>.tmp-<pid>`` and renames it to ``<name>`` when complete."""
    return any(n.startswith(".") and n.endswith(".tmp-{}".format(pid)) for n in os.listdir(save))


def last_file_id(save: Path):
    """(inode, mtime) of checkpoint_last.pt, or None: changes whenever a save renames a new file onto it."""
    try:
        stat = os.stat(save / "checkpoint_last.pt")
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def fork_main(main, argv, log_path: Path) -> int:
    """Run ``main()`` with ``sys.argv = argv`` in a forked child logging to ``log_path``; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        out = os.open(str(log_path) + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        root = logging.getLogger()
        handler = logging.FileHandler(log_path)  # flushed after every record
        handler.setFormatter(logging.Formatter("%(asctime)s | %(name)s | %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        sys.argv = list(map(str, argv))
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def reader_loop(path: Path, stop: Path, result: Path) -> None:
    from fairseq import checkpoint_utils

    loads, failures = 0, []
    while not stop.exists():
        if not path.exists():
            time.sleep(0.001)
            continue
        try:
            state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
            assert "model" in state and state["optimizer_history"], "loaded without model/optimizer state"
            loads += 1
        except Exception as e:  # every failure is reported, none is expected
            failures.append("{}: {}".format(type(e).__name__, str(e)[:200]))
    result.write_text(json.dumps({"loads": loads, "failures": failures}))


def write_corpus(raw: Path) -> None:
    rng = random.Random(3)
    raw.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 200), ("valid", 10)):
        text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(lines))
        (raw / "{}.txt".format(split)).write_text(text)


def warm_up(argv) -> None:
    """Do once, before forking, the slow first-time work of every trainer: torch's optimizer imports
    torch._dynamo (~2 s) and the first hydra config composition (~1 s)."""
    import torch._dynamo  # noqa: F401
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), list(map(str, argv[1:]))))


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def main(workdir: Path, kills: int, seed: int) -> dict:
    from fairseq_cli import preprocess, train

    rng = random.Random(seed)
    write_corpus(workdir / "raw")
    data, save = workdir / "data-bin", workdir / "checkpoints"
    status = wait(fork_main(preprocess.cli_main, [
        "fairseq-preprocess", "--only-source", "--trainpref", workdir / "raw" / "train.txt",
        "--validpref", workdir / "raw" / "valid.txt", "--destdir", data, "--workers", "1"], workdir / "preprocess.log"))
    if status != 0:
        raise RuntimeError("preprocessing failed: " + (workdir / "preprocess.log.out").read_text()[-2000:])
    save.mkdir()
    stop, reader_result = workdir / "stop-reader", workdir / "reader.json"
    reader = os.fork()
    if reader == 0:
        try:
            reader_loop(save / "checkpoint_last.pt", stop, reader_result)
        finally:
            os._exit(0)

    restarts, temp_kills, saved_before = [], 0, None
    argv = ["fairseq-train", data, *TRAIN_FLAGS, "--save-dir", save]
    warm_up(argv)
    started = time.time()
    for cycle in range(kills):
        log = workdir / "train{:02d}.log".format(cycle)
        pid = fork_main(train.cli_main, argv, log)
        saves_to_see = rng.randint(2, 5)  # a save is usually seen twice: its start and its end
        in_temp_window = cycle % 2 == 0
        seen, was_temp, exited = 0, False, False
        last_file = last_file_id(save)
        deadline = time.time() + 60
        while time.time() < deadline:
            # a save is seen starting (its temporary file appears) or ending (checkpoint_last.pt replaced),
            # so that a poll descheduled past a short save still counts it
            temp, current = writing_a_checkpoint(save, pid), last_file_id(save)
            if (temp and not was_temp) or current != last_file:
                seen += 1
            was_temp, last_file = temp, current
            if seen >= saves_to_see and (temp or not in_temp_window):
                if not in_temp_window:
                    time.sleep(rng.uniform(0.0, 0.04))
                break
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                exited = True
                break
            time.sleep(0.0005)
        if not exited:
            temp_kills += int(writing_a_checkpoint(save, pid))
            os.kill(pid, signal.SIGKILL)
            wait(pid)
        text = log.read_text() if log.exists() else ""
        loaded = [int(u) for u in LOADED.findall(text)]
        restarts.append({"cycle": cycle, "saved_before": saved_before, "resumed_at": loaded[0] if loaded else None,
                         "exited_by_itself": exited, "fell_back": "cannot be loaded" in text,
                         "error": (log.with_suffix(".log.out").read_text()[-1500:] if exited else "")})
        saved = [int(u) for u in SAVED.findall(text)]
        if saved:
            saved_before = max(saved)
    stop.write_text("stop")
    wait(reader)
    return {"kills": kills, "kills_with_a_temp_file_present": temp_kills, "restarts": restarts,
            "reader": json.loads(reader_result.read_text()), "seconds": round(time.time() - started, 1)}


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    summary = main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sys.stdout.write(json.dumps(summary) + "\n")
