"""Build script: lemon's compiled executors (csrc/) as one torch extension, ``lemon._C``.

Built against the torch that is installed (hence ``pip install --no-build-isolation``). The CPU
executor is built everywhere a C++17 compiler is; the CUDA executor where torch has CUDA and a
CUDA toolkit is found. Nothing here can make the install fail: without torch, with
``LEMON_NO_EXT=1``, or when compiling fails, lemon installs without ``lemon._C`` and its
reference executor works; ``backend="cpp"`` then says how to build it. When only the CUDA part
fails to compile, the CPU executor is built alone (``LEMON_NO_CUDA=1`` skips the CUDA part). What was built is
printed (``pip install -v`` shows it) and reported by ``lemon info``.
"""
import os
import sys

from setuptools import setup

CPU_SOURCES = ["csrc/ops.cpp", "csrc/cpu/block_pool.cpp", "csrc/cpu/dispatch.cpp", "csrc/cpu/kernel_generic.cpp",
               "csrc/cpu/kernel_avx2.cpp", "csrc/cpu/kernel_avx512.cpp", "csrc/cpu/mean.cpp", "csrc/cpu/populate.cpp"]
CUDA_SOURCES = ["csrc/cuda/ops_cuda.cpp", "csrc/cuda/expand_segment.cu"]
# -ffp-contract=off: a fused multiply-add rounds once where the reference rounds twice
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
# at::parallel_for is OpenMP in torch's headers: without -fopenmp it runs on one thread. The
# soname libgomp.so.1 resolves to the runtime torch already loaded (torch/lib ships it).
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
NVCC_FLAGS = ["-O3", "-std=c++17", "--fmad=false"]


def say(message: str) -> None:
    print(f"lemon: {message}", file=sys.stderr, flush=True)


def extension_setup() -> dict:
    if os.environ.get("LEMON_NO_EXT") == "1":
        say("LEMON_NO_EXT=1: not building the C++ extension (the reference executor works without it)")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        say("torch is not installed: not building the C++ extension; install torch first, then "
            "pip install --no-build-isolation -e .")
        return {}

    def cpu_only() -> "cpp_extension.CppExtension":
        return cpp_extension.CppExtension("lemon._C", CPU_SOURCES, extra_compile_args={"cxx": CXX_FLAGS + OPENMP},
                                          extra_link_args=OPENMP)

    with_cuda = (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
                 and os.environ.get("LEMON_NO_CUDA") != "1")
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # the visible GPU's arch, else Hopper
            arch = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{arch[0]}.{arch[1]}"
        extension = cpp_extension.CUDAExtension(
            "lemon._C", CPU_SOURCES + CUDA_SOURCES,
            extra_compile_args={"cxx": CXX_FLAGS + OPENMP + ["-DLEMON_WITH_CUDA"], "nvcc": NVCC_FLAGS},
            extra_link_args=OPENMP)
        built = f"the CPU and CUDA executors (CUDA archs {os.environ['TORCH_CUDA_ARCH_LIST']})"
    else:
        extension = cpu_only()
        built = ("the CPU executor (no CUDA: " + ("torch has no CUDA" if torch.version.cuda is None
                                                   else "no CUDA toolkit found") + ")")

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's builder, made optional: a failure leaves lemon installable without lemon._C,
        and a failure of the CUDA part leaves the CPU executor (the Triton kernels need neither)."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                say(f"built lemon._C with {built}")
                return
            except Exception as error:  # a compiler missing or failing, a torch ABI mismatch
                failure = f"{type(error).__name__}: {error}"
            if with_cuda:
                say(f"building the CUDA executor failed ({failure}); building the CPU executor alone "
                    "(LEMON_NO_CUDA=1 skips this attempt)")
                fallback = cpu_only()
                for attribute in ("sources", "include_dirs", "library_dirs", "libraries", "define_macros",
                                  "extra_compile_args", "extra_link_args"):  # the same object: setuptools
                    setattr(ext, attribute, getattr(fallback, attribute))  # keeps its own state on it
                try:
                    super().build_extension(ext)
                    say("built lemon._C with the CPU executor only: backend 'cuda' is not available")
                    return
                except Exception as error:
                    failure = f"{type(error).__name__}: {error}"
            say(f"building the C++ extension failed ({failure}); lemon works without it (reference "
                "executor). To retry: pip install --no-build-isolation -v -e .")

    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_setup())
