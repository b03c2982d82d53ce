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
PATCH_SET_VERSION = 4


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
        why="defines the allowlisted weights_only loader used by the two patches above",
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
    """torch.load with weights_only=True and an explicit allowlist (mega-fairseq patch)."""
    with torch.serialization.safe_globals(_checkpoint_safe_globals()):
        return torch.load(f, map_location=map_location, weights_only=True)
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
