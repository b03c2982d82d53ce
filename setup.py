"""mega_fairseq: the Mega model as a fairseq 0.12.2 user-dir plugin.

``python setup.py build_ext --inplace`` (run by ``make install`` after the editable install)
compiles the CPU kernels in ``mega_fairseq/csrc`` (torch C++ extensions) when torch and a C++
compiler are present: the EMA recurrence and the gates' element-wise work. Both are optional:
without them (or if one fails to build, which is reported) the EMA runs its blocked scan and the
gates run plain torch ops (same values).
"""
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension_build():
    """``(ext_modules, cmdclass)`` for the kernels, or empty ones when torch is not importable here."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("mega_fairseq: torch not importable at build time: the CPU kernels are not built", file=sys.stderr)
        return [], {}

    fallbacks = {
        "mega_fairseq._ema_recurrence": "the EMA uses its blocked scan",
        "mega_fairseq._silu_gates": "the gates use plain torch ops",
    }

    class OptionalBuildExtension(BuildExtension):
        """Builds each kernel; a failure is reported and the package installs without that kernel."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001 - any compiler failure leaves the pure-torch path
                print("mega_fairseq: {} was not built ({}); {}".format(ext.name, error, fallbacks[ext.name]),
                      file=sys.stderr)

    def kernel(name, source, flags=()):
        csrc = os.path.join("mega_fairseq", "csrc")
        return CppExtension(name, [os.path.join(csrc, source)], extra_compile_args=["-O3", *flags],
                            depends=[os.path.join(csrc, "cpu_dispatch.h")])

    kernels = [
        kernel("mega_fairseq._ema_recurrence", "ema_recurrence.cpp"),
        # no floating-point traps are watched, so the clamps in its exp may become vector selects
        kernel("mega_fairseq._silu_gates", "silu_gates.cpp", ["-fno-trapping-math"]),
    ]
    return kernels, {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = extension_build()

setup(
    name="mega_fairseq",
    version="0.1.0",
    description="Mega (Moving Average Equipped Gated Attention) for stock fairseq 0.12.2",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["mega_fairseq", "mega_fairseq.*"]),
    package_data={"mega_fairseq": ["config/**/*.yaml"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is deliberately not listed: installing it through a resolver may replace a local CPU
    # build with CUDA wheels. fairseq 0.12.2 is required (a local "+megaN" build satisfies it).
    install_requires=["fairseq==0.12.2"],
    entry_points={"console_scripts": ["mega-fairseq-user-dir = mega_fairseq.__main__:main"]},
    license="MIT",
)
