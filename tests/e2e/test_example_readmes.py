"""The commands the example READMEs give a new user: the translation scale-down flags, the hub's
generation arguments, and the byte-level prompt encoding / sample decoding of the LM README."""
import re
import subprocess
import sys

from helpers import REPO_ROOT

TRANSLATION = REPO_ROOT / "examples" / "translation"
LANGUAGE_MODEL = REPO_ROOT / "examples" / "language_model"


def code_blocks(readme):
    return re.findall(r"```(?:bash|python)\n(.*?)```", readme.read_text(), flags=re.S)


def test_translation_scale_down_example_overrides_what_stalls_small_models():
    block = next(b for b in code_blocks(TRANSLATION / "README.md") if "CPU=1 EVAL_BLEU=0" in b)
    assert "--normalize-before" in block  # the recipe is post-norm, which stalls at small sizes
    recipe = (TRANSLATION / "train.sh").read_text()
    # every regularisation / warm-up flag the recipe sets is overridden in the example
    for flag in ("--dropout", "--attention-dropout", "--hidden-dropout", "--activation-dropout", "--weight-decay",
                 "--warmup-updates"):
        assert re.search(r"{} \S".format(flag), recipe), flag
        assert re.search(r"{} \S".format(flag), block), flag


def test_translation_hub_example_uses_the_interactive_examples_lenpen():
    blocks = code_blocks(TRANSLATION / "README.md")
    interactive = next(b for b in blocks if b.lstrip().startswith("fairseq-interactive"))
    hub = next(b for b in blocks if "mt.translate(" in b)
    lenpen = re.search(r"--lenpen (\S+)", interactive).group(1)
    assert re.search(r"mt\.translate\(.*beam=5, lenpen={}\)".format(re.escape(lenpen)), hub)


def test_lm_readme_encodes_a_prompt_and_decodes_a_byte_level_sample():
    block = next(b for b in code_blocks(LANGUAGE_MODEL / "README.md") if "fairseq-interactive" in b)
    assert "--task mega_language_modeling" in block and "--sampling" in block
    encode, decode = re.findall(r'python -c "(.*?)"', block, flags=re.S)
    text = "The caf\u00e9 of 1999"
    tokens = subprocess.run([sys.executable, "-c", encode], input=text.encode(), capture_output=True, check=True).stdout
    assert tokens.decode().split() == [str(b) for b in text.encode()]
    h_line = "{} </s>\n".format(tokens.decode().strip())  # what follows the tabs of an H- line
    decoded = subprocess.run([sys.executable, "-c", decode], input=h_line.encode(), capture_output=True, check=True)
    assert decoded.stdout.decode() == text + "\n"
