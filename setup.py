"""Builds gpts_fairseq and its compiled masking op (gpts_fairseq._C, csrc/).

A CUDA extension when torch was built with CUDA and nvcc is found (CUDA_HOME), else CPU only.
torch is deliberately not in install_requires: build with the torch already installed
(`pip install --no-build-isolation -e .`), so pip can never pull a different torch.
"""

import glob
import os
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ModuleNotFoundError as error:  # pip's isolated build environment has no torch
    raise SystemExit(
        "gpts-fairseq builds its extension against your installed torch: install torch first, then "
        "`pip install --no-build-isolation .` (or run `make install`)"
    ) from error

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_PTH = "gpts_fairseq_hook.pth"  # registers gpts_mlm when fairseq is imported (no --user-dir)
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]  # OpenMP: ATen's parallel_for backend
NVCC_FLAGS = ["-O3", "--fmad=false"]
# the fairseq releases gpts_fairseq.compat follows (one definition, in the package)
FAIRSEQ_REQUIREMENT = re.search(r'FAIRSEQ_REQUIREMENT = "([^"]+)"',
                                open(os.path.join(HERE, "gpts_fairseq", "__init__.py")).read()).group(1)


def masking_extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp", root_dir=HERE))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu", root_dir=HERE))
    common = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if torch.version.cuda is not None and CUDA_HOME is not None:
        return CUDAExtension(
            "gpts_fairseq._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            **common,
        )
    return CppExtension("gpts_fairseq._C", cpp_sources, extra_compile_args={"cxx": CXX_FLAGS}, **common)


class BuildPyWithHook(build_py):
    """Wheels: the hook's .pth goes to the root of the wheel, i.e. into site-packages."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, HOOK_PTH), os.path.join(self.build_lib, HOOK_PTH))


class EditableWheelWithHook(editable_wheel):
    """Editable installs (pip install -e): the same .pth, beside setuptools' own."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        self.copy_file(os.path.join(HERE, HOOK_PTH), os.path.join(installation_dir, HOOK_PTH))


setup(
    name="gpts-fairseq",
    version="0.1.0",
    packages=find_packages(include=["gpts_fairseq", "gpts_fairseq.*"]),
    package_data={"gpts_fairseq.flexibert": ["space.yaml"]},  # the default design space
    python_requires=">=3.9",
    # torch and fairseq are not required: the user's own builds are kept (see the Makefile); the
    # "fairseq" extra names the supported releases (a fork of them works if it keeps their internals)
    install_requires=["numpy", "gpytorch>=1.11", "matplotlib", "packaging", "pyyaml"],
    # tensorboard: fairseq's --tensorboard-logdir writer and the test's event reader;
    # sentencepiece: examples/pretrain_from_raw_text.sh --sentencepiece (neither depends on torch);
    # pytest-xdist: `make test` runs the suite on every core
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.5", "hypothesis>=6", "tensorboard>=2.10",
                             "sentencepiece>=0.1.99"],
                    "fairseq": [FAIRSEQ_REQUIREMENT]},
    entry_points={"console_scripts": ["gpts-report = gpts_fairseq.report.cli:main"]},
    ext_modules=[masking_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithHook,
              "editable_wheel": EditableWheelWithHook},
)
