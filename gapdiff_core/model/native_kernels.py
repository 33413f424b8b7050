"""The generator's CPU kernels (`norm_kernels.cpp`), built on first use with the system's C++ compiler:

- `normalise`: per-image statistics of a channels-last fp32 / bf16 map (in fp32, over its valid region, the same
  whatever the number of threads or the batch), then the affine map and the activation, in place or into a channel
  slice of a wider map: two passes over the map, where the PyTorch ops (`generator._statistics`, `_normalise`)
  make seven, through fp32 copies of each block;
- `activate`: an activation into a channel slice (the decoder's cat + SELU in one pass);
- `im2col` + `linear_bf16_weights`: the convolutions on the smallest maps as fp32 matrix products with bf16
  weights (`packed_cpu.BF16_WEIGHT_PRODUCTS`).

The library is compiled against the torch in use (its headers, its OpenMP threads), for this CPU, in about a
second, and cached in `$GAPDIFF_KERNEL_CACHE` (default `~/.cache/gapdiff/kernels`) under a key of the source, the
torch version, the compiler and the CPU. Where no compiler is found or the build fails (the compiler's messages are
kept next to the cache key, and it is not retried), or with `GAPDIFF_NATIVE_KERNELS=0`, `kernels()` returns None
and the generator runs on PyTorch ops: the same function (fp32 within 0.01 grey levels at budget 8), slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("norm_kernels.cpp")
#: The activations `normalise` and `activate` apply (their codes in norm_kernels.cpp).
ACTS = {"none": 0, "relu": 1, "leaky_relu": 2, "selu": 3}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: Elements of one statistics block (its rows: this over the valid width x the channels, at least one), read twice
#: while in the core's cache (128 KB in bf16). Fixed, so an image's blocks are the same alone or in a batch.
BLOCK = 1 << 16


def cache_dir() -> Path:
    return Path(os.environ.get("GAPDIFF_KERNEL_CACHE") or Path.home() / ".cache" / "gapdiff" / "kernels")


#: -march=native: the library is built for the CPU it runs on (the cache key names it), with AVX-512's full width on
#: x86 where the CPU has it; contraction into FMA and no floating-point traps let the loops vectorise; -fopenmp runs
#: `at::parallel_for` on torch's own OpenMP threads.
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", "-std=c++17", "-fopenmp", "-shared",
         "-fPIC"] + (["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else [])


@lru_cache(maxsize=1)
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be built here (see the module docstring)."""
    if os.environ.get("GAPDIFF_NATIVE_KERNELS", "1") == "0" or sys.platform != "linux":
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        return None
    torch_dir = Path(torch.__file__).parent
    flags = [*FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{torch_dir / 'include'}"]
    libs = [f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}"]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), torch.__version__, compiler, *flags, *libs,
                                    _cpu_fingerprint()]).encode()).hexdigest()[:20]
    library, failed = cache_dir() / f"norm_kernels-{key}.so", cache_dir() / f"norm_kernels-{key}.failed"
    try:
        if failed.exists():
            return None
        if not library.exists():
            _build(compiler, flags, libs, library, failed)
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        warnings.warn(f"gapdiff: could not build or load the normalisation kernels ({exc}); using PyTorch ops (the "
                      "same function, slower)", RuntimeWarning, stacklevel=2)
        return None
    i64, ptr, f32p = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)
    lib.gapdiff_normalise.argtypes = [ptr, ptr, ctypes.c_int] + [i64] * 13 + [f32p, f32p, ctypes.c_float,
                                                                             ctypes.c_int, f32p, f32p]
    lib.gapdiff_activate.argtypes = [ptr, ptr, ctypes.c_int] + [i64] * 10 + [ctypes.c_int]
    lib.gapdiff_im2col.argtypes = [ptr, f32p, ctypes.c_int] + [i64] * 9 + [ctypes.c_int]
    lib.gapdiff_linear_bf16_weights.argtypes = [f32p, ptr, f32p, f32p, i64, i64, i64]
    return lib


def _build(compiler: str, flags: list[str], libs: list[str], library: Path, failed: Path) -> None:
    """Compile to a temporary file next to `library`, then move it there (processes building at once each write
    their own); on failure, write the compiler's messages to `failed` and raise OSError."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    result = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial, *libs], capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(partial)
        failed.write_text(result.stderr)
        raise OSError(f"{compiler} failed; its messages are in {failed}")
    os.replace(partial, library)


def supports(*maps: torch.Tensor) -> bool:
    """Whether the kernels can take these maps: on the CPU, fp32 or bf16, 4-d, channels innermost (stride 1)."""
    return all(y.device.type == "cpu" and y.dtype in _DTYPES and y.dim() == 4 and y.stride(1) == 1 for y in maps)


def normalise(lib: ctypes.CDLL, y: torch.Tensor, valid: tuple[int, int], gamma: torch.Tensor, beta: torch.Tensor,
              eps: float, act: str, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """out = act(per-image batch norm of y), the statistics over each image's top-left `valid` (h, w) pixels; `out`
    (y's shape and dtype) may be y itself or a channel slice of a wider map. Returns the statistics (fp32 mean
    and biased variance, N x C x 1 x 1)."""
    n, c, h, w = y.shape
    _check(y, out)
    mean, var = (torch.empty(n, c, 1, 1) for _ in range(2))
    gamma, beta = gamma.float().contiguous(), beta.float().contiguous()  # fp32 already: no copies
    lib.gapdiff_normalise(y.data_ptr(), out.data_ptr(), _DTYPES[y.dtype], n, c, h, w, *_strides(y), *_strides(out),
                          *valid, max(1, BLOCK // (c * valid[1])), _floats(gamma), _floats(beta), eps, ACTS[act],
                          _floats(mean), _floats(var))
    return mean, var


def activate(lib: ctypes.CDLL, y: torch.Tensor, act: str, out: torch.Tensor) -> torch.Tensor:
    """out = act(y); `out` as for `normalise`."""
    n, c, h, w = y.shape
    _check(y, out)
    lib.gapdiff_activate(y.data_ptr(), out.data_ptr(), _DTYPES[y.dtype], n, c, h, w, *_strides(y), *_strides(out),
                         ACTS[act])
    return out


def im2col(lib: ctypes.CDLL, x: torch.Tensor, kernel: int, stride: int, reflect: bool) -> torch.Tensor:
    """The columns of a convolution with padding 1 (zeros, or reflected) of x, in fp32: one row per output pixel
    (image, row, column), one column per (tap row, tap column, channel) of the kernel."""
    n, c, h, w = x.shape
    assert supports(x)
    pixels = n * ((h + 2 - kernel) // stride + 1) * ((w + 2 - kernel) // stride + 1)
    cols = torch.empty(pixels, kernel * kernel * c)
    lib.gapdiff_im2col(x.data_ptr(), _floats(cols), _DTYPES[x.dtype], n, c, h, w, *_strides(x), kernel, stride,
                       int(reflect))
    return cols


def linear_bf16_weights(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + bias in fp32 for fp32 x (m x k) and bf16 w (n x k), n a multiple of 4 and k of 16."""
    m, k = x.shape
    assert x.dtype == torch.float32 and w.dtype == torch.bfloat16 and w.shape[1] == k, (x.dtype, w.dtype)
    assert w.shape[0] % 4 == 0 and k % 16 == 0, w.shape
    bias = torch.zeros(w.shape[0]) if bias is None else bias.float().contiguous()
    rows = -(-m // 4) * 4
    if rows != m:
        x = torch.cat((x, x.new_zeros(rows - m, k)))
    x, y = x.contiguous(), x.new_empty(rows, w.shape[0])
    lib.gapdiff_linear_bf16_weights(_floats(x), w.data_ptr(), _floats(bias), _floats(y), rows, w.shape[0], k)
    return y[:m]


def _check(y: torch.Tensor, out: torch.Tensor) -> None:
    assert supports(y, out) and out.shape == y.shape and out.dtype == y.dtype, (y.shape, out.shape, out.dtype)


def _strides(y: torch.Tensor) -> tuple[int, int, int]:
    return y.stride(0), y.stride(2), y.stride(3)


def _floats(t: torch.Tensor):
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))


def _cpu_fingerprint() -> str:
    """The CPU's model and features (-march=native code must not run on another CPU sharing the cache)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in info if line.startswith(("model name", "flags", "Features"))}))
