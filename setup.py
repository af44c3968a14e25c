"""Build script: the C++ CPU extension always, the CUDA extension when possible.

Environment switches:
    ASTRA_BUILD_CUDA=auto|1|0   build astra_kernels._C_cuda (auto: torch has CUDA and nvcc is found)
    ASTRA_NO_EXTENSIONS=1       build nothing native (pure-torch reference backend only)
    ASTRA_DEBUG=1               -O0 -g
    TORCH_CUDA_ARCH_LIST        CUDA architectures (default "9.0" = sm_90, H100/H200)

Install with ``pip install --no-build-isolation -e .`` so that the already
installed torch is used: under build isolation pip would fetch another torch.

Object files stay in build/temp.<platform>-<python> for every build, editable
installs and wheels alike, so ninja recompiles only what changed since the last
build of any kind (``make clean`` removes them).
"""
import glob
import os
import sys
import sysconfig

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> bool:
    flag = os.environ.get("ASTRA_BUILD_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        if not possible:
            raise RuntimeError(
                "ASTRA_BUILD_CUDA=1 but the CUDA extension cannot be built: "
                f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}"
            )
        return True
    return possible


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's ninja build, its object files in one directory that outlives every build."""

    def finalize_options(self):
        super().finalize_options()
        # pip's editable builds would compile in a fresh temporary directory every time
        self.build_temp = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


def get_extensions():
    if os.environ.get("ASTRA_NO_EXTENSIONS") == "1":
        return []
    debug = os.environ.get("ASTRA_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    cxx = opt + ["-std=c++17", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    include = [os.path.join(ROOT, "csrc")]
    extensions = [
        cpp_extension.CppExtension(
            "astra_kernels._C",
            _sources("csrc/bindings/cpu_module.cpp") + _sources("csrc/cpu/*.cpp") + _sources("csrc/core/*.cpp")
            + _sources("csrc/ops_common/*.cpp"),
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]
    if _want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        extensions.append(
            cpp_extension.CUDAExtension(
                "astra_kernels._C_cuda",
                _sources("csrc/bindings/cuda_module.cpp") + _sources("csrc/cuda_ops/*.cpp") + _sources("csrc/cuda/*.cu")
                + _sources("csrc/ops_common/*.cpp"),
                include_dirs=include,
                extra_compile_args={"cxx": opt + ["-std=c++17"], "nvcc": opt[:1] + ["-std=c++17", "-lineinfo"]},
            )
        )
    return extensions


setup(
    packages=find_packages(include=["astra_kernels", "astra_kernels.*"]) + find_packages("python"),
    # the runtime (astra), the experiment harness (astra_lab) and the command line joining them (astra_cli)
    package_dir={name: f"python/{name}" for name in ("astra", "astra_lab", "astra_cli")},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
