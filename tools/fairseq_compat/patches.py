"""Compatibility patch set that makes the fairseq 0.12.2 sdist work on Python 3.11 / torch 2.13.

Each patch is a named, exact text substitution with the reason it exists.  Applying is
idempotent: a patch whose replacement text is already present is skipped, and a patch whose
anchor text is missing (or found more than once) stops the build with a message naming the patch
and the file, because the tree is then not the sdist these patches were written against.

Run as a script: ``python patches.py <unpacked fairseq-0.12.2 dir>``.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

# Bumped whenever the patch set changes; becomes the wheel's local version label (0.12.2+megaN).
PATCH_SET_VERSION = 6


@dataclass(frozen=True)
class Patch:
    name: str
    path: str
    why: str
    old: str
    new: str


def _default_factory_fields(config_names: List[str], owner: str) -> List[Patch]:
    """Python 3.11 rejects dataclass fields whose default is a (mutable, unhashable) dataclass
    instance.  ``field(default_factory=X)`` is the equivalent that 3.11 accepts."""
    patches = []
    for line in config_names:
        attr, cls = line.split(":")
        patches.append(
            Patch(
                name=f"dataclass-default-factory:{owner}.{attr}",
                path=owner,
                why="Python >= 3.11 forbids unhashable dataclass instances as field defaults",
                old=f"    {attr}: {cls} = {cls}()\n",
                new=f"    {attr}: {cls} = field(default_factory={cls})\n",
            )
        )
    return patches


PATCHES: List[Patch] = [
    *_default_factory_fields(
        [
            "common:CommonConfig",
            "common_eval:CommonEvalConfig",
            "distributed_training:DistributedTrainingConfig",
            "dataset:DatasetConfig",
            "optimization:OptimizationConfig",
            "checkpoint:CheckpointConfig",
            "bmuf:FairseqBMUFConfig",
            "generation:GenerationConfig",
            "eval_lm:EvalLMConfig",
            "interactive:InteractiveConfig",
            "ema:EMAConfig",
        ],
        "fairseq/dataclass/configs.py",
    ),
    *_default_factory_fields(
        ["encoder:EncDecBaseConfig", "decoder:DecoderConfig"],
        "fairseq/models/transformer/transformer_config.py",
    ),
    Patch(
        name="dataclass-default-factory:transformer_config.quant_noise",
        path="fairseq/models/transformer/transformer_config.py",
        why="Python >= 3.11 forbids unhashable dataclass instances as field defaults",
        old="quant_noise: QuantNoiseConfig = field(default=QuantNoiseConfig())",
        new="quant_noise: QuantNoiseConfig = field(default_factory=QuantNoiseConfig)",
    ),
    Patch(
        name="hydra-init-default-factory",
        path="fairseq/dataclass/initialize.py",
        why="hydra_init read field.default, which is MISSING once the config groups use "
        "default_factory (see the dataclass patches); build the default from the factory instead",
        old="        v = FairseqConfig.__dataclass_fields__[k].default\n",
        new="        v = FairseqConfig()._get_default(k)  # mega-fairseq: default_factory aware\n",
    ),
    Patch(
        name="safe-checkpoint-load",
        path="fairseq/checkpoint_utils.py",
        why="torch >= 2.6 loads with weights_only=True by default and refuses fairseq checkpoints "
        "(they hold argparse.Namespace and numpy scalars). Keep safe loading on and allowlist "
        "exactly those types instead of passing weights_only=False",
        old='        state = torch.load(f, map_location=torch.device("cpu"))\n',
        new='        state = _safe_load_checkpoint(f, map_location=torch.device("cpu"))\n',
    ),
    Patch(
        name="safe-checkpoint-load-ema",
        path="fairseq/checkpoint_utils.py",
        why="same as safe-checkpoint-load, for load_ema_from_checkpoint",
        old="        new_state = torch.load(\n            f,\n",
        new="        new_state = _safe_load_checkpoint(\n            f,\n",
    ),
    Patch(
        name="safe-checkpoint-load-helper",
        path="fairseq/checkpoint_utils.py",
        why="defines the allowlisted weights_only loader used by the two patches above; it also names "
        "a truncated or corrupted file as such instead of a deep zip-reader error",
        old="logger = logging.getLogger(__name__)\n",
        new='''logger = logging.getLogger(__name__)


def _checkpoint_safe_globals():
    """Non-tensor types that fairseq checkpoints legitimately contain (mega-fairseq patch)."""
    import argparse

    allowed = [argparse.Namespace]
    # numpy scalars / arrays end up in checkpoints through meters and data iterators
    try:
        from numpy._core import multiarray as _np_multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as _np_multiarray
    allowed += [_np_multiarray.scalar, _np_multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return allowed


def _safe_load_checkpoint(f, map_location):
    """torch.load with weights_only=True and an explicit allowlist (mega-fairseq patch). A file that is
    incomplete or corrupted is reported as such, naming it, instead of as a deep zip-reader error."""
    with torch.serialization.safe_globals(_checkpoint_safe_globals()):
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, OSError) as e:  # f is open: an OSError here is about its contents
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(
                "could not read checkpoint {}: the file is incomplete or corrupted ({}). Use another checkpoint "
                "of the same run (checkpoint_best.pt, checkpoint_N.pt, checkpoint_E_U.pt); fairseq-train resumes "
                "from the newest one that loads by itself".format(getattr(f, "name", f), detail)
            ) from None
''',
    ),
    Patch(
        name="distributed-object-broadcast",
        path="fairseq/distributed/utils.py",
        why="broadcast_object un-pickles bytes that another worker of the SAME job just "
        "torch.save'd (logging outputs, arbitrary Python objects), not a file from disk; "
        "torch >= 2.6's weights_only default rejects them, so say explicitly that this is trusted",
        old='        obj = torch.load(buffer, map_location="cpu")\n',
        new='        obj = torch.load(buffer, map_location="cpu", weights_only=False)  # in-job IPC\n',
    ),
    Patch(
        name="cpu-distributed-single-node",
        path="fairseq/distributed/utils.py",
        why="--distributed-world-size N on one machine asserted N <= number of GPUs, so CPU "
        "data-parallel training (gloo) could not start; without CUDA, N CPU workers are fine",
        old="    assert (\n        cfg.distributed_world_size <= torch.cuda.device_count()\n    ), ",
        new="    assert (\n        not torch.cuda.is_available()  # mega-fairseq: CPU workers\n"
        "        or cfg.distributed_world_size <= torch.cuda.device_count()\n    ), ",
    ),
    Patch(
        name="cpu-distributed-spawn-count",
        path="fairseq/distributed/utils.py",
        why="the spawner started min(#GPUs, world size) processes: zero on a CPU-only machine",
        old="                nprocs=min(\n                    torch.cuda.device_count(),\n",
        new="                nprocs=min(\n                    torch.cuda.device_count() or "
        "cfg.distributed_training.distributed_world_size,  # mega-fairseq: CPU workers\n",
    ),
    Patch(
        name="cpu-distributed-num-procs",
        path="fairseq/distributed/utils.py",
        why="same count, recorded in the config (distributed_num_procs)",
        old="                torch.cuda.device_count(), cfg.distributed_world_size\n",
        new="                torch.cuda.device_count() or cfg.distributed_world_size,  # mega-fairseq: CPU\n"
        "                cfg.distributed_world_size,\n",
    ),
    Patch(
        name="cpu-distributed-gloo",
        path="fairseq/distributed/utils.py",
        why="the default backend is NCCL, which needs GPUs; without CUDA use gloo",
        old="                backend=cfg.distributed_training.distributed_backend,\n",
        new="                backend=(cfg.distributed_training.distributed_backend if torch.cuda.is_available()\n"
        "                         else \"gloo\"),  # mega-fairseq: NCCL needs GPUs\n",
    ),
    Patch(
        name="cpu-ddp-device-ids",
        path="fairseq/models/distributed_fairseq_model.py",
        why="torch's DistributedDataParallel rejects device_ids for a CPU module, so the default "
        "--ddp-backend (pytorch_ddp) failed on CPU",
        old="            device_ids=[args.device_id],\n            output_device=args.device_id,\n",
        new="            device_ids=[args.device_id] if device.type == \"cuda\" else None,  # mega-fairseq\n"
        "            output_device=args.device_id if device.type == \"cuda\" else None,\n",
    ),
    Patch(
        name="transformer-disable-bt-fastpath",
        path="fairseq/modules/transformer_layer.py",
        why="the 'BetterTransformer' inference fast path calls torch._transformer_encoder_layer_fwd "
        "with the torch 1.12 signature; on torch 2.13 it raises 'Mask Type should be defined' during "
        "fairseq-generate. The regular path computes the same result",
        old="                if self.int_version >= 1130:\n                    self.BT_version = True\n",
        new="                if self.int_version >= 1130:\n                    self.BT_version = True\n"
        "        self.BT_version = False  # mega-fairseq: fast path incompatible with torch >= 2\n",
    ),
    Patch(
        name="transformer-encoder-disable-nested-tensor",
        path="fairseq/models/transformer/transformer_encoder.py",
        why="the same fast path, at encoder level: it packs the input into a nested tensor that "
        "the regular layers then cannot read on torch 2.13 ('NestedTensorImpl doesn't support "
        "sizes') once the layer fast path above is off",
        old="                    NT_version = True\n\n        if (\n            BT_version\n",
        new="                    NT_version = True\n"
        "        BT_version = NT_version = False  # mega-fairseq: fast path incompatible with torch >= 2\n"
        "\n        if (\n            BT_version\n",
    ),
    Patch(
        name="numpy2-np-int",
        path="fairseq/data/data_utils.py",
        why="numpy 2 removed the np.int alias (it was the builtin int)",
        old="                    np.int,\n",
        new="                    int,\n",
    ),
    Patch(
        name="numpy2-np-float",
        path="fairseq/modules/dynamic_crf_layer.py",
        why="numpy 2 removed the np.float alias (it was the builtin float)",
        old='None], np.float("inf")',
        new='None], float("inf")',
    ),
    Patch(
        name="numpy2-np-compat-long-token-blocks",
        path="fairseq/data/token_block_dataset.py",
        why="numpy 2 removed np.compat (np.compat.long was the builtin int); used by "
        "--sample-break-mode eos",
        old="                        len(sizes), dtype=np.compat.long\n",
        new="                        len(sizes), dtype=int  # mega-fairseq: np.compat.long (numpy<2)\n",
    ),
    Patch(
        name="numpy2-np-compat-long-buckets",
        path="fairseq/data/language_pair_dataset.py",
        why="numpy 2 removed np.compat (np.compat.long was the builtin int); used by --num-batch-buckets",
        old="            num_tokens = np.vectorize(self.num_tokens, otypes=[np.compat.long])\n",
        new="            num_tokens = np.vectorize(self.num_tokens, otypes=[int])  # mega-fairseq: numpy 2\n",
    ),
    Patch(
        name="numpy2-percentile-method",
        path="fairseq/data/data_utils.py",
        why="numpy 2 removed np.percentile's interpolation= keyword (renamed method= in numpy 1.22); "
        "used by --num-batch-buckets",
        old='            interpolation="lower",\n',
        new='            method="lower",  # mega-fairseq: numpy >= 1.22 name\n',
    ),
    # ------------------------------------------------------------------ checkpoint safety
    Patch(
        name="checkpoint-safety-helpers",
        path="fairseq/checkpoint_utils.py",
        why="defines the atomic writer, the save-directory lock and the resume fallback used by the "
        "checkpoint-* patches below",
        old="def torch_persistent_save(obj, filename, async_write: bool = False):\n",
        new='''# ---- mega-fairseq patch: checkpoint safety (atomic files, one trainer per save dir, resume fallback)
SAVE_DIR_LOCK_NAME = "fairseq-train.lock"
_TEMP_MARK = ".tmp-"
_held_save_dir_locks = {}


def _temp_name(filename):
    """A hidden temporary name next to ``filename``, unique to this process (no checkpoint pattern matches it)."""
    directory, base = os.path.split(os.path.abspath(filename))
    return os.path.join(directory, ".{}{}{}".format(base, _TEMP_MARK, os.getpid()))


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(filename, write):
    """Write ``filename`` so that it only ever appears complete: ``write(f)`` into a temporary file in
    the same directory, flush and fsync it, rename it over ``filename``, fsync the directory. On any
    failure (a full disk included) the temporary file is removed and ``filename`` is left untouched."""
    tmp = _temp_name(filename)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):
            raise OSError(
                getattr(e, "errno", None) or 5,
                "could not write checkpoint {} ({}: {}). The previous checkpoints in {} are intact (the "
                "partial file was removed): free disk space or fix the directory, then re-run the same "
                "command to resume".format(filename, type(e).__name__, e, os.path.dirname(os.path.abspath(filename))),
            ) from None
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(filename)))


def _atomic_copy(src, dst):
    """Copy ``src`` to ``dst`` through :func:`_atomic_write` (``dst`` never holds a partial copy)."""
    import shutil

    with open(src, "rb") as source:
        _atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 16 * 1024 * 1024))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(text):
    """``(pid, host)`` from a lock file's text ``pid=N host=H``, or None."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    try:
        return int(fields["pid"]), fields.get("host", "")
    except (KeyError, ValueError):
        return None


def lock_save_dir(save_dir):
    """Refuse a second live trainer on ``save_dir``: hold an exclusive lock on ``save_dir/fairseq-train.lock``,
    which names this process (``pid=N host=H``). The kernel drops the lock when the process dies, so the lock
    of a killed trainer is simply taken over; so is one still held by an orphaned data-loader worker of a
    trainer that no longer runs. Also removes temporary checkpoint files left by killed trainers."""
    import fcntl
    import socket

    save_dir = os.path.abspath(save_dir)
    if save_dir in _held_save_dir_locks:
        return
    path = os.path.join(save_dir, SAVE_DIR_LOCK_NAME)
    host = socket.gethostname()
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(os.pread(fd, 200, 0).decode("utf-8", "replace"))
            if owner is not None and owner[1] == host and not _pid_alive(owner[0]):
                # held by a child (data-loader worker) of a dead trainer: replace the file
                try:
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        os.remove(path)
                except FileNotFoundError:
                    pass
                os.close(fd)
                continue
            os.close(fd)
            raise RuntimeError(
                "--save-dir {} is in use by another trainer ({}; lock file {}). Use another --save-dir, or wait "
                "for that run to end; two trainers on one directory overwrite each other's checkpoints".format(
                    save_dir, "PID {} on {}".format(*owner) if owner else "unknown process", path))
        except OSError as e:  # a file system without locks (some network mounts): train, unprotected
            os.close(fd)
            logger.warning("cannot lock %s (%s): a second trainer on this --save-dir would not be detected", path, e)
            return
        previous = _lock_owner(os.pread(fd, 200, 0).decode("utf-8", "replace"))
        if previous is not None and previous[0] != os.getpid():
            logger.warning("taking over %s from trainer PID %d on %s, which no longer runs", path, *previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, "pid={} host={}\\n".format(os.getpid(), host).encode(), 0)
        os.fsync(fd)
        _held_save_dir_locks[save_dir] = fd
        for name in os.listdir(save_dir):
            if name.startswith(".") and _TEMP_MARK in name and not name.endswith(_TEMP_MARK + str(os.getpid())):
                try:
                    os.remove(os.path.join(save_dir, name))
                except OSError:
                    pass
        import atexit

        atexit.register(unlock_save_dir, save_dir)
        return
    raise RuntimeError("could not take the lock {}: it keeps being replaced by another process".format(path))


def unlock_save_dir(save_dir):
    """Release the lock taken by :func:`lock_save_dir` (the file stays, emptied: removing it could let two
    trainers lock two different files)."""
    fd = _held_save_dir_locks.pop(os.path.abspath(save_dir), None)
    if fd is not None:
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


def _checkpoint_problem(path):
    """None if ``path`` holds a complete checkpoint, else why not. A zip checkpoint (torch >= 1.6) is checked
    by its directory and every member's CRC (no unpickling); an older file is loaded."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return None if bad is None else "member {} is corrupted".format(bad)
        load_checkpoint_to_cpu(path)
        return None
    except Exception as e:  # any failure to read means: not loadable
        return "{}: {}".format(type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def _loadable_checkpoint(path, save_dir, suffix=""):
    """``path`` if it loads, else the newest (by modification time) ``checkpoint*.pt`` of ``save_dir`` that
    does, with a warning naming both files. Raises RuntimeError when none does."""
    problem = _checkpoint_problem(path)
    if problem is None:
        return path
    pattern = re.compile(r"checkpoint.*{}\\.pt$".format(re.escape(suffix or "")))
    candidates = [os.path.join(save_dir, n) for n in os.listdir(save_dir) if pattern.match(n)]
    candidates = [c for c in candidates if os.path.abspath(c) != os.path.abspath(path)]
    for candidate in sorted(candidates, key=os.path.getmtime, reverse=True):
        if _checkpoint_problem(candidate) is None:
            logger.warning("%s cannot be loaded (%s); resuming from %s, the newest checkpoint that loads",
                           path, problem, candidate)
            return candidate
    raise RuntimeError(
        "{} cannot be loaded ({}) and no other checkpoint in {} loads. Delete it to train from scratch, or "
        "pass --restore-file with a good checkpoint".format(path, problem, save_dir))


def torch_persistent_save(obj, filename, async_write: bool = False):
''',
    ),
    Patch(
        name="checkpoint-atomic-save",
        path="fairseq/checkpoint_utils.py",
        why="the checkpoint was written to a fixed '.tmp' name without fsync, so a crash could still "
        "publish an empty or partial file, and a full disk left a traceback without saying the previous "
        "files are intact; write through _atomic_write (unique temp, flush, fsync, rename)",
        old="            # do atomic save\n"
        '            with PathManager.open(filename + ".tmp", "wb") as f:\n'
        "                _torch_persistent_save(obj, f)\n"
        '            PathManager.rename(filename + ".tmp", filename)\n',
        new="            # do atomic save (mega-fairseq: unique temp name, flush, fsync, rename)\n"
        "            if PathManager.path_requires_pathmanager(filename):\n"
        '                with PathManager.open(filename + ".tmp", "wb") as f:\n'
        "                    _torch_persistent_save(obj, f)\n"
        '                PathManager.rename(filename + ".tmp", filename)\n'
        "            else:\n"
        "                _atomic_write(filename, lambda f: _torch_persistent_save(obj, f))\n",
    ),
    Patch(
        name="checkpoint-atomic-copies",
        path="fairseq/checkpoint_utils.py",
        why="checkpoint_last.pt / checkpoint_best.pt were plain copies written in place: a reader could "
        "load a torn file, and a full disk left a truncated checkpoint_best.pt; copy atomically instead",
        old="                assert PathManager.copy(\n"
        "                    checkpoints[0], cp, overwrite=True\n"
        '                ), f"Failed to copy {checkpoints[0]} to {cp}"\n',
        new="                if PathManager.path_requires_pathmanager(cp):\n"
        "                    assert PathManager.copy(\n"
        "                        checkpoints[0], cp, overwrite=True\n"
        '                    ), f"Failed to copy {checkpoints[0]} to {cp}"\n'
        "                else:\n"
        "                    _atomic_copy(checkpoints[0], cp)  # mega-fairseq: never a torn copy\n",
    ),
    Patch(
        name="checkpoint-resume-fallback",
        path="fairseq/checkpoint_utils.py",
        why="a corrupted checkpoint_last.pt ended the resume in a long traceback with no way forward; "
        "fall back to the newest checkpoint of --save-dir that loads, warning with both names",
        old="        first_launch = not PathManager.exists(checkpoint_path)\n",
        new="        first_launch = not PathManager.exists(checkpoint_path)\n"
        "        if not first_launch and not PathManager.path_requires_pathmanager(checkpoint_path):\n"
        "            checkpoint_path = _loadable_checkpoint(checkpoint_path, cfg.save_dir, suffix)  # mega-fairseq\n",
    ),
    Patch(
        name="checkpoint-save-dir-lock",
        path="fairseq_cli/train.py",
        why="two trainers on one --save-dir overwrote (and resumed from) each other's checkpoints; the "
        "first one holds a lock file naming its PID and a second live one is refused",
        old="    if distributed_utils.is_master(cfg.distributed_training):\n"
        "        checkpoint_utils.verify_checkpoint_directory(cfg.checkpoint.save_dir)\n",
        new="    if distributed_utils.is_master(cfg.distributed_training):\n"
        "        checkpoint_utils.verify_checkpoint_directory(cfg.checkpoint.save_dir)\n"
        "        if not cfg.checkpoint.no_save:\n"
        "            checkpoint_utils.lock_save_dir(cfg.checkpoint.save_dir)  # mega-fairseq: one trainer per dir\n",
    ),
    Patch(
        name="checkpoint-save-dir-unlock",
        path="fairseq_cli/train.py",
        why="release the --save-dir lock when training ends (also released at exit, or by the kernel if killed)",
        old='    logger.info("done training in {:.1f} seconds".format(train_meter.sum))\n',
        new='    logger.info("done training in {:.1f} seconds".format(train_meter.sum))\n'
        "    checkpoint_utils.unlock_save_dir(cfg.checkpoint.save_dir)  # mega-fairseq\n",
    ),
    Patch(
        name="train-finished-job-does-nothing",
        path="fairseq_cli/train.py",
        why="re-running a finished job trained one update past --max-update and overwrote its "
        "checkpoints (the limit was only checked after an update); check it before training",
        old="    lr = trainer.get_lr()\n",
        new="    lr = trainer.get_lr()\n"
        "    if cfg.optimization.max_update > 0 and trainer.get_num_updates() >= cfg.optimization.max_update:\n"
        "        # mega-fairseq: a finished job re-run does nothing\n"
        "        logger.info(\n"
        '            "nothing to do: the checkpoint is already at {} updates (--max-update {}); raise "\n'
        '            "--max-update to train further".format(trainer.get_num_updates(), cfg.optimization.max_update)\n'
        "        )\n"
        "        max_epoch = 0\n"
        "    elif epoch_itr.next_epoch_idx > max_epoch:\n"
        '        logger.info("nothing to do: --max-epoch {} is already done; raise it to train further".format(max_epoch))\n',
    ),
    # ------------------------------------------------------------------ other stock tools
    Patch(
        name="nan-detector-tensor-hooks",
        path="fairseq/nan_detector.py",
        why="Module.register_backward_hook (deprecated) makes torch >= 2 raise StopIteration on modules "
        "that return a dict without a top-level tensor (every encoder), burying the real "
        "FloatingPointError; watch the gradients of the module outputs (the same grad_output the old "
        "hook saw) with tensor hooks set from the forward hook",
        old="        if self.forward:\n"
        "            self.fhooks.append(module.register_forward_hook(self.fhook_fn))\n"
        "        if self.backward:\n"
        "            self.bhooks.append(module.register_backward_hook(self.bhook_fn))\n",
        new="        if self.forward or self.backward:  # mega-fairseq: backward through output tensor hooks\n"
        "            self.fhooks.append(module.register_forward_hook(self.fhook_fn))\n"
        "\n"
        "    def _hook_output_grads(self, module, output):\n"
        "        if torch.is_tensor(output):\n"
        "            if output.requires_grad and torch.is_grad_enabled():\n"
        "                self.bhooks.append(output.register_hook(\n"
        "                    lambda grad, module=module: self.bhook_fn(module, None, grad)))\n"
        "        elif isinstance(output, dict):\n"
        "            for v in output.values():\n"
        "                self._hook_output_grads(module, v)\n"
        "        elif isinstance(output, (list, tuple)):\n"
        "            for v in output:\n"
        "                self._hook_output_grads(module, v)\n",
    ),
    Patch(
        name="nan-detector-forward-hook",
        path="fairseq/nan_detector.py",
        why="the forward hook now also sets the backward (gradient) hooks, see nan-detector-tensor-hooks",
        old="    def fhook_fn(self, module, inp, output):\n"
        "        if not self.has_printed_f:\n"
        "            self._apply(module, inp, output, backward=False)\n",
        new="    def fhook_fn(self, module, inp, output):\n"
        "        if self.forward and not self.has_printed_f:\n"
        "            self._apply(module, inp, output, backward=False)\n"
        "        if self.backward:\n"
        "            self._hook_output_grads(module, output)\n",
    ),
    Patch(
        name="eval-lm-no-silent-drop",
        path="fairseq/tasks/language_modeling.py",
        why="fairseq-eval-lm skipped every block longer than the model's maximum without an error "
        "(ignore_invalid_inputs=True): 'Evaluated 0 tokens, Perplexity 1.00' with exit 0, or a "
        "perplexity over a fraction of the split; refuse such blocks with the fix instead",
        old="        if context_window > 0:\n            dataset = LMContextWindowDataset(\n",
        new="        if isinstance(max_positions, (int, float)) and len(dataset.sizes) > 0:  # mega-fairseq\n"
        "            longest = int(max(dataset.sizes)) + context_window\n"
        "            if longest > max_positions:\n"
        "                raise ValueError(\n"
        '                    "fairseq-eval-lm: blocks of up to {} tokens (--tokens-per-sample {}) are longer than the "\n'
        '                    "model\'s maximum of {} tokens and would be skipped, leaving tokens unscored. Allowed: "\n'
        '                    "--tokens-per-sample <= {} (the context window counts too)".format(\n'
        "                        longest, self.args.tokens_per_sample + context_window, max_positions, max_positions\n"
        "                    )\n"
        "                )\n"
        "        if context_window > 0:\n            dataset = LMContextWindowDataset(\n",
    ),
    Patch(
        name="score-sacrebleu2",
        path="fairseq_cli/score.py",
        why="fairseq-score --sacrebleu passed file objects; sacrebleu >= 2 wants lists of strings "
        "('BLEU: Each element of refs should be a sequence of strings')",
        old="                print(sacrebleu.corpus_bleu(fdsys, [fdref]).format())\n",
        new="                # mega-fairseq: sacrebleu >= 2 takes lists of strings, not file objects\n"
        "                hypotheses = [line.rstrip(\"\\n\") for line in fdsys]\n"
        "                references = [line.rstrip(\"\\n\") for line in fdref]\n"
        "                print(sacrebleu.corpus_bleu(hypotheses, [references]).format())\n",
    ),
    Patch(
        name="huffman-bitarray3",
        path="fairseq/data/huffman/huffman_coder.py",
        why="bitarray 3 removed bitarray.util.rindex (Huffman decoding failed)",
        old="        remove_cnt = util.rindex(a, 1)\n",
        new="        remove_cnt = len(a) - 1 - a[::-1].index(1)  # mega-fairseq: util.rindex is gone in bitarray 3\n",
    ),
    Patch(
        name="xformers-mask-bool",
        path="fairseq/modules/multihead_attention.py",
        why="_mask_for_xformers passed a uint8 mask to masked_fill_, which torch >= 2 rejects (bool only)",
        old='        new_mask = new_mask.masked_fill_(mask, -float("inf"))\n',
        new='        new_mask = new_mask.masked_fill_(mask.to(torch.bool), -float("inf"))  # mega-fairseq\n',
    ),
    Patch(
        name="half-precision-needs-an-accelerator",
        path="fairseq/trainer.py",
        why="--fp16 on CPU ended in 'Torch not compiled with CUDA enabled' deep in the optimizer and --bf16 "
        "(which fairseq 0.12.2's argument parser turns into --tpu) in \"'NoneType' object has no attribute "
        "'xla_device'\"; say it in one line before building anything",
        old="        self.cuda = torch.cuda.is_available() and not cfg.common.cpu and not self.tpu\n",
        new="        self.cuda = torch.cuda.is_available() and not cfg.common.cpu and not self.tpu\n"
        "        if (cfg.common.fp16 or cfg.common.bf16) and not self.cuda:  # mega-fairseq: one clear message\n"
        "            import importlib.util\n"
        "\n"
        '            if not (self.tpu and importlib.util.find_spec("torch_xla") is not None):\n'
        "                raise ValueError(\n"
        '                    "--fp16/--bf16 (and --memory-efficient-fp16/bf16) need a CUDA GPU (bf16 in fairseq 0.12.2: "\n'
        '                    "a TPU with torch_xla); this run has neither (--cpu, or no GPU). Allowed here: drop the "\n'
        '                    "flag to train in float32"\n'
        "                )\n",
    ),
    Patch(
        name="translation-eval-bleu-args-none",
        path="fairseq/tasks/translation.py",
        why="checkpoints written by the official Mega code hold eval_bleu=True with eval_bleu_args=None; "
        "json.loads(None) made checkpoint_utils.load_model_ensemble_and_task (fairseq-validate, scripts) "
        "fail with a TypeError. None means no extra arguments",
        old="            gen_args = json.loads(self.cfg.eval_bleu_args)\n",
        new='            gen_args = json.loads(self.cfg.eval_bleu_args or "{}")  # mega-fairseq: None = {}\n',
    ),
    Patch(
        name="translation-eval-bleu-detok-args-none",
        path="fairseq/tasks/translation.py",
        why="same as translation-eval-bleu-args-none, for eval_bleu_detok_args",
        old="            detok_args = json.loads(self.cfg.eval_bleu_detok_args)\n",
        new='            detok_args = json.loads(self.cfg.eval_bleu_detok_args or "{}")  # mega-fairseq: None = {}\n',
    ),
    # ------------------------------------------------------------------ noise that is not about the run
    Patch(
        name="hydra-quiet-internal-compose-helper",
        path="fairseq/dataclass/utils.py",
        why="defines the warning filter used by hydra-quiet-internal-compose",
        old="def convert_namespace_to_omegaconf(args: Namespace) -> DictConfig:\n",
        new='''def _hydra_deprecation_notices_hidden():
    """Hide Hydra >= 1.1's deprecation notices (UserWarning) while fairseq composes its own built-in config
    (mega-fairseq patch): they are about fairseq's config code, never about the user's run."""
    import contextlib
    import warnings

    @contextlib.contextmanager
    def hidden():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield

    return hidden()


def convert_namespace_to_omegaconf(args: Namespace) -> DictConfig:
''',
    ),
    Patch(
        name="hydra-quiet-internal-compose",
        path="fairseq/dataclass/utils.py",
        why="every fairseq command converts its arguments through hydra.experimental's initialize/compose, "
        "which prints five Hydra >= 1.1 deprecation notices about fairseq's own config code on each run",
        old="    with initialize(config_path=config_path):\n",
        new="    with _hydra_deprecation_notices_hidden(), initialize(config_path=config_path):  # mega-fairseq\n",
    ),
    Patch(
        name="hydra-main-version-base",
        path="fairseq_cli/hydra_train.py",
        why="fairseq-hydra-train's @hydra.main gave no version_base, so Hydra >= 1.2 warned on every run; "
        "'1.1' keeps exactly the behaviour it assumed",
        old='@hydra.main(config_path=os.path.join("..", "fairseq", "config"), config_name="config")\n',
        new='@hydra.main(config_path=os.path.join("..", "fairseq", "config"), config_name="config", version_base="1.1")\n',
    ),
    Patch(
        name="hydra-train-quiet-schema-and-chdir-notices",
        path="fairseq_cli/hydra_train.py",
        why="fairseq-hydra-train stores its schema under the user's config name (so Hydra >= 1.1 printed "
        "'<name>' is validated against ConfigStore schema with the same name' twice on every run) and relies "
        "on Hydra changing into hydra.run.dir (Hydra >= 1.2 printed 'Future Hydra versions will no longer "
        "change working directory' on every run); both are about fairseq's own design, nothing a user can act "
        "on, so exactly these two notices are hidden; the behaviour is unchanged",
        old="    hydra_init(cfg_name)\n    hydra_main()\n",
        new="    import warnings  # mega-fairseq: hide two Hydra notices about fairseq's design (see the patch set)\n"
        "\n"
        "    warnings.filterwarnings(\"ignore\", message=r\"\\s*'.*' is validated against ConfigStore schema with \"\n"
        "                            r\"the same name\", category=UserWarning)\n"
        "    warnings.filterwarnings(\"ignore\", message=r\"Future Hydra versions will no longer change working \"\n"
        "                            r\"directory\", category=UserWarning)\n"
        "    hydra_init(cfg_name)\n    hydra_main()\n",
    ),
    Patch(
        name="dataloader-pin-memory-cuda-only",
        path="fairseq/data/iterators.py",
        why="every data loader asked for pinned memory, which torch >= 2 warns about on machines without "
        "an accelerator (it was never used there)",
        old="            pin_memory=True,\n            persistent_workers=self.num_workers > 0,\n        )\n",
        new="            pin_memory=torch.cuda.is_available(),  # mega-fairseq: no warning without CUDA\n"
        "            persistent_workers=self.num_workers > 0,\n        )\n",
    ),
    Patch(
        name="dataloader-pin-memory-cuda-only-grouped",
        path="fairseq/data/iterators.py",
        why="same as dataloader-pin-memory-cuda-only, for the batch-sampler data loader",
        old="                pin_memory=True,\n",
        new="                pin_memory=torch.cuda.is_available(),  # mega-fairseq: no warning without CUDA\n",
    ),
    Patch(
        name="amp-autocast-torch2",
        path="fairseq/tasks/fairseq_task.py",
        why="torch.cuda.amp.autocast(...) is deprecated in torch >= 2.4 and warned on every training step's "
        "first call; torch.amp.autocast('cuda', ...) is the same context manager",
        old="            with torch.cuda.amp.autocast(enabled=(isinstance(optimizer, AMPOptimizer))):\n",
        new="            with torch.amp.autocast(\"cuda\", enabled=(isinstance(optimizer, AMPOptimizer))):  # mega-fairseq\n",
    ),
    Patch(
        name="requirements-hydra-omegaconf",
        path="setup.py",
        why="the sdist pins hydra-core<1.1 / omegaconf<2.1, which do not work on Python 3.11; "
        "hydra-core 1.3.2 / omegaconf 2.3.0 do (with the patches above)",
        old='            "hydra-core>=1.0.7,<1.1",\n            "omegaconf<2.1",\n',
        new='            "hydra-core>=1.3.2,<1.4",\n            "omegaconf>=2.3.0,<2.4",\n',
    ),
    Patch(
        name="requirements-no-torchaudio",
        path="setup.py",
        why="torchaudio is only used by speech tasks (imported lazily), has no CPU build here and "
        "its releases pin other torch versions; keeping it would replace torch with CUDA wheels",
        old='            "torchaudio>=0.8.0",\n',
        new="",
    ),
    Patch(
        name="local-version-label",
        path="fairseq/version.txt",
        why="pip show fairseq must say that this is a patched build",
        old="0.12.2",
        new=f"0.12.2+mega{PATCH_SET_VERSION}",
    ),
]


def apply_all(root: Path) -> None:
    for patch in PATCHES:
        target = root / patch.path
        if not target.is_file():
            sys.exit(f"fairseq compat patch '{patch.name}': file {target} not found. "
                     "Is this an unpacked fairseq 0.12.2 sdist?")
        text = target.read_text()
        count = text.count(patch.old)
        if (patch.new and patch.new in text) or (not patch.new and count == 0):
            print(f"  [already applied] {patch.name}")
            continue
        if count != 1:
            sys.exit(f"fairseq compat patch '{patch.name}': expected its anchor text exactly once in "
                     f"{patch.path}, found it {count} times. The source is not the fairseq 0.12.2 sdist "
                     "this patch set was written for; delete the build cache and re-run `make install`.")
        target.write_text(text.replace(patch.old, patch.new))
        print(f"  [applied] {patch.name}: {patch.why}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python patches.py <unpacked fairseq-0.12.2 source dir>")
    apply_all(Path(sys.argv[1]))
