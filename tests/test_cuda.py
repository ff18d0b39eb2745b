"""The CUDA source compiles (nvcc, compile only, sm_80 and sm_90) against the installed torch,
with the nvcc flags setup.py uses. Runs wherever nvcc is found, GPU or not."""

import ast
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or (
    os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
)


def setup_py_constant(name):
    """A literal list assigned at the top level of setup.py (so the check uses its flags)."""
    with open(os.path.join(REPO, "setup.py")) as handle:
        module = ast.parse(handle.read())
    for node in module.body:
        if isinstance(node, ast.Assign) and any(t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


@pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc not found")
def test_cuda_source_compiles_for_sm80_and_sm90(tmp_path):
    torch_include = cpp_extension.include_paths()[0]
    defines = [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    if not os.path.exists(os.path.join(torch_include, "c10/cuda/impl/cuda_cmake_macros.h")):
        # CPU wheels ship the c10/cuda headers but not this generated one (it only sets
        # Windows export macros); a CUDA torch has it and setup.py needs no define.
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    command = [
        NVCC, "-c", os.path.join(REPO, "csrc/cuda/mask_tokens.cu"), "-o", str(tmp_path / "k.o"),
        "-std=c++20",  # what torch's BuildExtension passes to nvcc (its headers need C++20)
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        f"-I{sysconfig.get_paths()['include']}", f"-I{os.path.join(REPO, 'csrc')}",
        *cpp_extension.COMMON_NVCC_FLAGS, *setup_py_constant("NVCC_FLAGS"), *defines,
        "-Xcompiler", "-fPIC",
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "k.o").stat().st_size > 0
