"""The plugin loads through fairseq's --user-dir, from a source checkout and when installed."""
import subprocess
import sys

import pytest

from helpers import PLUGIN_DIR, run_cli

EXPECTED = {
    "models": ["mega", "mega_lm"],
    "archs": ["mega_wmt_en_de", "mega_wmt_en_de_big", "mega_lm_adaptive_big", "mega_lm_wiki103"],
    "lr_schedulers": ["linear_decay"],
    "tasks": ["mega_language_modeling"],
}

CHECK = """
import argparse, json, sys
from fairseq import utils
from fairseq.models import MODEL_REGISTRY, ARCH_MODEL_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq.tasks import TASK_REGISTRY
utils.import_user_module(argparse.Namespace(user_dir=sys.argv[1]))
print(json.dumps({"models": sorted(MODEL_REGISTRY), "archs": sorted(ARCH_MODEL_REGISTRY),
                  "lr_schedulers": sorted(LR_SCHEDULER_REGISTRY), "tasks": sorted(TASK_REGISTRY)}))
"""


def _registered_after_user_dir(user_dir, cwd):
    import json

    out = subprocess.run([sys.executable, "-c", CHECK, str(user_dir)], capture_output=True, text=True,
                         cwd=cwd, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["source-path", "relative-path", "printed-path"])
def test_user_dir_registers_models_tasks_and_schedulers(how, tmp_path):
    if how == "source-path":
        user_dir, cwd = PLUGIN_DIR, tmp_path
    elif how == "relative-path":
        user_dir, cwd = "mega_fairseq", PLUGIN_DIR.parent
    else:
        user_dir = subprocess.run([sys.executable, "-m", "mega_fairseq"], capture_output=True, text=True,
                                  cwd=tmp_path, check=True).stdout.strip()
        cwd = tmp_path
    registered = _registered_after_user_dir(user_dir, cwd)
    for kind, names in EXPECTED.items():
        missing = sorted(set(names) - set(registered[kind]))
        assert not missing, f"{kind} not registered through --user-dir={user_dir}: {missing}"


def test_printed_user_dir_is_the_package_directory(tmp_path):
    printed = run_cli("mega-fairseq-user-dir", cwd=tmp_path).stdout.strip()
    assert printed == str(PLUGIN_DIR)


PARSE = """
import json, sys
from fairseq import options
parser = options.get_training_parser()
args = options.parse_args_and_arch(parser, ["/no/data", "--user-dir", sys.argv[1], "--arch", "mega_wmt_en_de"])
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from mega_fairseq.models.arch_presets import PRESETS
model_cfg = convert_namespace_to_omegaconf(args).model
overrides = PRESETS["mega"]["mega_wmt_en_de"]
print(json.dumps({"arch": args.arch, "wrong": [k for k, v in overrides.items() if model_cfg[k] != v],
                  "n_overrides": len(overrides)}))
"""


def test_fairseq_command_line_parses_mega_options_through_user_dir(tmp_path):
    import json

    # what fairseq-train does with its argv before building anything (its --help stops too early
    # to show model options, so parse as the tools do)
    out = subprocess.run([sys.executable, "-c", PARSE, str(PLUGIN_DIR)], capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    parsed = json.loads(out.strip().splitlines()[-1])
    assert parsed["arch"] == "mega_wmt_en_de" and parsed["n_overrides"] > 0
    assert parsed["wrong"] == [], "preset values not applied on the command-line route"
