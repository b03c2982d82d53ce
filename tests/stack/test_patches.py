"""One test (at least) per compatibility patch in tools/fairseq_compat/patches.py, on the
installed build. Pipeline-level coverage (train/generate/eval-lm/hydra) is in test_stack_*.py."""
import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools" / "fairseq_compat"))
import patches  # noqa: E402


def test_every_patch_is_applied_in_the_installed_fairseq():
    import fairseq

    site = Path(fairseq.__file__).resolve().parent.parent
    for patch in patches.PATCHES:
        if patch.path in ("setup.py", "fairseq/version.txt"):
            continue  # build inputs, not installed: their effect is checked through the metadata below
        text = (site / patch.path).read_text()
        if patch.new:
            assert patch.new in text, patch.name
        else:
            assert patch.old not in text, patch.name


def test_version_label_and_requirements_tell_the_truth():
    import fairseq

    expected = f"0.12.2+mega{patches.PATCH_SET_VERSION}"
    assert fairseq.__version__ == expected
    assert importlib.metadata.version("fairseq") == expected
    requires = importlib.metadata.requires("fairseq")
    assert not any(r.startswith("torchaudio") for r in requires)
    assert any(re.match(r"hydra-core\s*(>=|<).*1\.3", r) for r in requires), requires


def test_config_groups_are_built_by_default_factories():
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.transformer.transformer_config import TransformerConfig

    a, b = FairseqConfig(), FairseqConfig()
    assert a.common is not b.common  # a fresh instance each, not one shared default
    a.common.seed = 12345
    assert b.common.seed != 12345
    t = TransformerConfig()
    assert t.encoder is not TransformerConfig().encoder and t.quant_noise.pq == 0.0


def test_hydra_init_registers_every_config_group():
    from fairseq.dataclass.initialize import hydra_init
    from hydra.core.config_store import ConfigStore

    hydra_init("mega_test_config")
    stored = ConfigStore.instance().repo
    for group in ("common", "dataset", "optimization", "checkpoint", "generation", "eval_lm"):
        assert f"{group}.yaml" in stored, group


def test_numpy2_span_masking_without_np_int():
    from fairseq.data.data_utils import compute_mask_indices

    np.random.seed(0)
    mask = compute_mask_indices((2, 50), None, mask_prob=0.3, mask_length=3, no_overlap=True, min_space=1)
    assert mask.shape == (2, 50) and mask.any()


def test_numpy2_dynamic_crf_without_np_float():
    from fairseq.modules.dynamic_crf_layer import DynamicCRF

    crf = DynamicCRF(num_embedding=7, low_rank=4, beam_size=3)
    emissions = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    score = crf(emissions, targets, torch.ones(2, 5, dtype=torch.bool))
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_numpy2_eos_token_blocks_without_np_compat():
    from fairseq.data import TokenBlockDataset

    sentences = [torch.tensor([5, 6, 2]), torch.tensor([7, 2]), torch.tensor([8, 9, 10, 2])]
    blocks = TokenBlockDataset(sentences, [3, 2, 4], block_size=8, pad=1, eos=2, break_mode="eos")
    assert [blocks[i].tolist() for i in range(len(blocks))] == [s.tolist() for s in sentences]


def test_numpy2_length_buckets_without_np_compat():
    from fairseq.data import Dictionary, LanguagePairDataset

    d = Dictionary()
    src = [torch.tensor([4, 5, 2]), torch.tensor([4, 2]), torch.tensor([5, 5, 5, 5, 2])]
    dataset = LanguagePairDataset(src, [3, 2, 5], d, tgt=src, tgt_sizes=[3, 2, 5], tgt_dict=d, num_buckets=2)
    assert len(dataset.buckets) >= 1 and dataset.bucketed_num_tokens.dtype.kind == "i"


def _broadcast_worker(rank, world_size, port, queue):
    import torch.distributed as dist
    from fairseq.distributed import utils as dist_utils

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    obj = {"args": argparse.Namespace(arch="mega"), "stats": [1.5, "x"], "t": torch.arange(3)} if rank == 0 else None
    received = dist_utils.broadcast_object(obj, src_rank=0, group=dist.group.WORLD)
    queue.put((rank, received["args"].arch, received["stats"], received["t"].tolist()))
    dist.destroy_process_group()


def test_distributed_broadcast_object_accepts_python_objects():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = sorted(queue.get(timeout=10) for _ in range(2))
    assert results == [(0, "mega", [1.5, "x"], [0, 1, 2]), (1, "mega", [1.5, "x"], [0, 1, 2])]


def test_transformer_inference_fast_path_is_off():
    from fairseq.models.transformer import TransformerConfig, TransformerEncoderBase
    from fairseq.data import Dictionary

    d = Dictionary()
    for w in "abcdef":
        d.add_symbol(w)
    cfg = TransformerConfig()
    cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim, cfg.encoder.attention_heads, cfg.encoder.layers = 8, 16, 2, 1
    enc = TransformerEncoderBase(cfg, d, torch.nn.Embedding(len(d), 8, padding_idx=d.pad())).eval()
    tokens = torch.tensor([[d.pad(), 4, 5, d.eos()], [4, 5, 6, d.eos()]])
    with torch.no_grad():
        out = enc(tokens, src_lengths=torch.tensor([3, 4]))
    assert not out["encoder_out"][0].is_nested
    assert out["encoder_out"][0].shape == (4, 2, 8)


def test_patch_anchor_mismatch_fails_loudly(tmp_path):
    # a tree that is not the 0.12.2 sdist must stop the build with a message naming the patch
    (tmp_path / "fairseq" / "dataclass").mkdir(parents=True)
    (tmp_path / "fairseq" / "dataclass" / "configs.py").write_text("# not fairseq\n")
    with pytest.raises(SystemExit) as err:
        patches.apply_all(tmp_path)
    assert "dataclass-default-factory" in str(err.value) and "configs.py" in str(err.value)


def test_nan_detector_reports_a_nan_gradient_of_an_encoder_decoder_instead_of_stopiteration(caplog):
    import logging

    from fairseq.nan_detector import NanDetector

    class Encoder(torch.nn.Module):  # returns a dict without a top-level tensor, as fairseq encoders do
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return {"encoder_out": [self.proj(x)], "encoder_padding_mask": []}

    class EncoderDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.decoder(self.encoder(x)["encoder_out"][0])

    model = EncoderDecoder()
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"):
        with NanDetector(model):
            (model(torch.randn(5, 4)) * float("nan")).sum().backward()
    assert "NaN detected in output of decoder, shape: torch.Size([5, 3]), backward" in caplog.text


def test_nan_detector_still_reports_a_forward_nan(caplog):
    import logging

    from fairseq.nan_detector import NanDetector

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"):
        with NanDetector(model):
            model(torch.full((2, 4), float("nan"))).sum().backward()
    assert "NaN detected in output of 0, shape: torch.Size([2, 4]), forward" in caplog.text


def test_huffman_coder_round_trips_with_bitarray_3():
    from fairseq.data.huffman import HuffmanCodeBuilder

    builder = HuffmanCodeBuilder()
    for symbol, count in (("a", 5), ("b", 3), ("c", 2), ("d", 1)):
        builder.increment(symbol, count)
    coder = builder.build_code()
    tokens = ["a", "d", "c", "b", "a", "a", "c"]
    assert [node.symbol for node in coder.decode(coder.encode(tokens))] == tokens


def test_xformers_mask_conversion_accepts_uint8_masks():
    from fairseq.modules.multihead_attention import _mask_for_xformers

    mask = torch.tensor([[0, 1, 0]], dtype=torch.uint8)
    additive = _mask_for_xformers(mask, to_dtype=torch.float32)
    assert additive.tolist() == [[0.0, float("-inf"), 0.0]]


@pytest.mark.parametrize("flag", ["--fp16", "--bf16", "--memory-efficient-fp16"])
def test_half_precision_without_an_accelerator_is_refused_in_one_line(flag):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    args = options.parse_args_and_arch(options.get_training_parser(), [
        "unused-data-dir", "--task", "language_modeling", "--arch", "transformer_lm", "--cpu", flag])
    with pytest.raises(ValueError, match=r"--fp16/--bf16 \(and --memory-efficient-fp16/bf16\) need a CUDA GPU .*"
                                         r"drop the flag to train in float32"):
        Trainer(convert_namespace_to_omegaconf(args), task=None, model=torch.nn.Linear(2, 2),
                criterion=torch.nn.Module())
