"""mega_fairseq: the Mega model as a fairseq 0.12.2 user-dir plugin."""
from setuptools import find_packages, setup

setup(
    name="mega_fairseq",
    version="0.1.0",
    description="Mega (Moving Average Equipped Gated Attention) for stock fairseq 0.12.2",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["mega_fairseq", "mega_fairseq.*"]),
    package_data={"mega_fairseq": ["config/**/*.yaml"]},
    include_package_data=True,
    # torch is deliberately not listed: installing it through a resolver may replace a local CPU
    # build with CUDA wheels. fairseq 0.12.2 is required (a local "+megaN" build satisfies it).
    install_requires=["fairseq==0.12.2"],
    entry_points={"console_scripts": ["mega-fairseq-user-dir = mega_fairseq.__main__:main"]},
    license="MIT",
)
