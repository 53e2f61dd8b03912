"""Keep llama.cpp's AMX kernels away from the weights on CPUs where they crash.

llama-cpp-python built from source targets the build machine (GGML_NATIVE). On an Intel CPU with
AMX (Xeon 4th gen and later) that compiles ggml's AMX kernels, and the CPU backend then offers two
"extra" weight buffer types, in this order: "AMX", then "CPU_REPACK". llama.cpp gives each weight
the first buffer type in that list that can run its matmul, so the quantized weights go to AMX and
the first decode segfaults in `ggml_backend_amx_mul_mat` (ggml-org/llama.cpp#20824, open).

`use_extra_bufts=False` avoids the crash but drops CPU_REPACK too (the interleaved weight layout
the AVX2/AVX-512 matmuls are fast with). Pointing every weight at CPU_REPACK with
`tensor_buft_overrides` is no way out either: an override is taken as given, and a tensor that
CPU_REPACK has no layout for (norms, Q5_0, Q6_K, Q8_0 on x86) crashes the load on a NULL
repack routine. So the mitigation takes "AMX" out of the CPU backend's extra buffer type list,
the list `ggml_backend_dev_get_extra_bufts` hands to llama.cpp's loader, and leaves the rest:
llama.cpp then places the weights exactly as on a build without AMX (or on a kernel that refuses
AMX, where ggml leaves the entry out itself), CPU_REPACK included. AMX buffers are the only way
ggml reaches its AMX kernels, so none of them run.

`SYNTH_LLAMA_AMX` = auto (default: mitigate iff the CPU and the build both have AMX),
off (always mitigate) or on (never).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError

ENV = "SYNTH_LLAMA_AMX"
SETTINGS = ("auto", "off", "on")
AMX_BUFT = "AMX"  # ggml_backend_amx_buffer_type_get_name
CPU_AMX_FLAGS = frozenset({"amx_int8", "amx_tile"})  # the kernels need AMX-TILE and AMX-INT8

_lock = threading.Lock()


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in /proc/cpuinfo text (x86 "flags", ARM "Features"), over all processors."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> str:
    """/proc/cpuinfo, or "" where there is none (then auto never mitigates: set SYNTH_LLAMA_AMX=off)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_has_amx(cpuinfo: str) -> bool:
    return bool(cpu_flags(cpuinfo) & CPU_AMX_FLAGS)


def build_has_amx(system_info: str) -> bool:
    """Whether llama.cpp was compiled with AMX kernels: `llama_print_system_info()` lists
    "AMX_INT8 = 1" then (ggml_cpu_has_amx_int8 reports the compile-time __AMX_INT8__)."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", system_info) is not None


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace")


def setting(environ: Mapping[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower() or "auto"
    if value not in SETTINGS:
        raise BackendError(f"{ENV}={value!r}: use auto (the default), off (avoid AMX) or on (allow AMX)")
    return value


def needs_mitigation(cpuinfo: str, sysinfo: str, mode: str = "auto") -> bool:
    """auto: only where AMX would run at all, i.e. the CPU has it AND the build has the kernels."""
    if mode == "off":
        return True
    if mode == "on":
        return False
    return cpu_has_amx(cpuinfo) and build_has_amx(sysinfo)


@dataclass(frozen=True)
class Plan:
    mode: str
    cpu_amx: bool
    build_amx: bool
    mitigate: bool


def plan(environ: Mapping[str, str] | None = None) -> Plan:
    mode = setting(environ)
    cpuinfo, sysinfo = read_cpuinfo(), system_info()
    return Plan(mode, cpu_has_amx(cpuinfo), build_has_amx(sysinfo), needs_mitigation(cpuinfo, sysinfo, mode))


# ---- ggml's backend registry, through its C API ----


@functools.cache
def _ggml():
    """ggml's C API with the signatures used here, or None if this build does not export it."""
    try:
        from llama_cpp import llama_cpp as bindings

        # Our own handle on the same, already loaded library (dlopen returns the loaded one), so the
        # argtypes set here never touch the function objects llama_cpp itself uses.
        lib = ctypes.CDLL(bindings._lib._name)
        lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_buft_name.restype = ctypes.c_char_p
        lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
        # Registers the backends if none is yet (builds that load them as plugins); a no-op otherwise,
        # and what Llama(...) calls first anyway.
        bindings.llama_backend_init()
    except (ImportError, AttributeError, OSError):
        return None
    return lib


def _extra_bufts():
    """(ggml library, the CPU device's NULL-terminated extra buffer type array), or None when this
    build does not let us reach it. The array is the one llama.cpp's loader reads at every model
    load (make_cpu_buft_list, and LoRA adapters); ggml builds it once per process (a static vector
    in ggml_backend_cpu_device_get_extra_buffers_type) and hands out its data pointer."""
    lib = _ggml()
    if lib is None:
        return None
    dev = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    reg = lib.ggml_backend_dev_backend_reg(dev) if dev else None
    address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
    if not address:
        return None
    array = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(dev)
    return (lib, array) if array else None


def _entries(array) -> Iterator[int]:
    i = 0
    while array[i]:
        yield array[i]
        i += 1


def extra_buffer_types() -> list[str] | None:
    """Names of the CPU backend's extra weight buffer types, in llama.cpp's order of preference
    (e.g. ["AMX", "CPU_REPACK"] on an AMX build), or None if the registry is out of reach."""
    with _lock:
        found = _extra_bufts()
        if found is None:
            return None
        lib, array = found
        return [lib.ggml_backend_buft_name(buft).decode() for buft in _entries(array)]


def drop_extra_buffer_types(names: Iterable[str]) -> list[str] | None:
    """Take the named buffer types out of the list in place, for every later model load in this
    process (models already loaded keep their buffers). Returns the names removed ([] if none was
    there), or None if the registry is out of reach."""
    names = set(names)
    with _lock:
        found = _extra_bufts()
        if found is None:
            return None
        lib, array = found
        entries = list(_entries(array))
        keep = [b for b in entries if lib.ggml_backend_buft_name(b).decode() not in names]
        for i in range(len(entries)):  # compact; the NULL terminator stays where it was or moves up
            array[i] = keep[i] if i < len(keep) else None
        return [lib.ggml_backend_buft_name(b).decode() for b in entries if b not in keep]


@contextlib.contextmanager
def _model_params(**fields):
    """`Llama(...)` builds its llama_model_params from `llama_model_default_params()` and loads the
    model inside `__init__`, with no argument for fields such as use_extra_bufts: set them by
    wrapping that function for the duration of one construction."""
    from llama_cpp import llama_cpp as bindings

    original = bindings.llama_model_default_params

    def default_params():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    with _lock:
        bindings.llama_model_default_params = default_params
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


def without_extra_buffer_types():
    """Every model loaded inside this block gets use_extra_bufts=False (no AMX, no CPU_REPACK)."""
    return _model_params(use_extra_bufts=False)


def load_llama(*, extra_bufts: bool = True, environ: Mapping[str, str] | None = None, cls=None, **kwargs):
    """`llama_cpp.Llama(**kwargs)` (or `cls(**kwargs)`, a subclass of it), with the AMX mitigation
    applied first when `plan()` says so.

    If the registry cannot be reached the mitigation falls back to use_extra_bufts=False (safe, but
    without CPU_REPACK). `extra_bufts=False` asks for that last resort directly (benchmarks)."""
    import llama_cpp

    cls = cls or llama_cpp.Llama
    if plan(environ).mitigate and drop_extra_buffer_types([AMX_BUFT]) is None:
        extra_bufts = False
    if extra_bufts:
        return cls(**kwargs)
    with without_extra_buffer_types():
        return cls(**kwargs)
