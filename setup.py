from setuptools import find_packages, setup

setup(
    name="gpts-fairseq",
    version="0.1.0",
    packages=find_packages(include=["gpts_fairseq", "gpts_fairseq.*"]),
    python_requires=">=3.9",
)
