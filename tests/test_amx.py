"""The AMX mitigation (synth/llm/cpu.py): the decision on fixture texts, then real llama.cpp loads.

Every load runs in its own Python process: a native crash there is a failed test naming the signal,
not a dead pytest run, and each process starts with ggml's buffer type list as llama.cpp built it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from synth.errors import BackendError
from synth.llm import cpu

from .conftest import REPO

# ---- (a) the decision ----

# Trimmed /proc/cpuinfo of a Xeon w5-3435X (Sapphire Rapids) and of an AMD EPYC (this kind of host).
SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) w5-3435X
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni \
avx512_bf16 avx_vnni amx_bf16 avx512_fp16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni \
avx512_bf16 avx_vnni amx_bf16 avx512_fp16 amx_tile amx_int8
"""
EPYC = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni \
avx512_bf16 avx_vnni avx512vbmi
"""
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"

# llama_print_system_info() of a native build on an AMX machine, and on this host.
SYSINFO_AMX = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
    "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
    "OPENMP = 1 | REPACK = 1 | "
)
SYSINFO_NO_AMX = SYSINFO_AMX.replace("AMX_INT8 = 1 | ", "")


def test_cpu_flags_parse_x86_and_arm():
    assert {"amx_int8", "amx_tile", "avx2"} <= cpu.cpu_flags(SAPPHIRE_RAPIDS)
    assert "model" not in cpu.cpu_flags(SAPPHIRE_RAPIDS)
    assert "amx_tile" not in cpu.cpu_flags(EPYC)
    assert "asimddp" in cpu.cpu_flags(GRAVITON)
    assert cpu.cpu_flags("") == frozenset()
    assert cpu.cpu_has_amx(SAPPHIRE_RAPIDS) and not cpu.cpu_has_amx(EPYC) and not cpu.cpu_has_amx(GRAVITON)


def test_build_detection_reads_system_info():
    assert cpu.build_has_amx(SYSINFO_AMX)
    assert not cpu.build_has_amx(SYSINFO_NO_AMX)
    assert not cpu.build_has_amx("")


@pytest.mark.parametrize(
    ("cpuinfo", "sysinfo", "expected"),
    [
        (SAPPHIRE_RAPIDS, SYSINFO_AMX, True),  # the crashing combination
        (SAPPHIRE_RAPIDS, SYSINFO_NO_AMX, False),  # e.g. built with GGML_NATIVE=OFF: no AMX kernels
        (EPYC, SYSINFO_AMX, False),  # a build copied from an AMX machine: ggml registers no AMX here
        (EPYC, SYSINFO_NO_AMX, False),
        (GRAVITON, "CPU : NEON = 1 | ARM_FMA = 1 | REPACK = 1 | ", False),
        ("", SYSINFO_AMX, False),  # no /proc/cpuinfo: auto trusts nothing (SYNTH_LLAMA_AMX=off forces)
    ],
)
def test_auto_mitigates_iff_cpu_and_build_have_amx(cpuinfo, sysinfo, expected):
    assert cpu.needs_mitigation(cpuinfo, sysinfo) is expected
    assert cpu.needs_mitigation(cpuinfo, sysinfo, "auto") is expected


@pytest.mark.parametrize(("cpuinfo", "sysinfo"), [(SAPPHIRE_RAPIDS, SYSINFO_AMX), (EPYC, SYSINFO_NO_AMX)])
def test_env_override_both_ways(cpuinfo, sysinfo):
    assert cpu.needs_mitigation(cpuinfo, sysinfo, cpu.setting({"SYNTH_LLAMA_AMX": "off"})) is True
    assert cpu.needs_mitigation(cpuinfo, sysinfo, cpu.setting({"SYNTH_LLAMA_AMX": "on"})) is False


def test_setting_values():
    assert cpu.setting({}) == "auto"
    assert cpu.setting({"SYNTH_LLAMA_AMX": ""}) == "auto"
    assert cpu.setting({"SYNTH_LLAMA_AMX": " OFF "}) == "off"
    with pytest.raises(BackendError, match="SYNTH_LLAMA_AMX='disable'"):
        cpu.setting({"SYNTH_LLAMA_AMX": "disable"})


def test_plan_on_this_host_follows_what_it_reports():
    """The real inputs: this host's /proc/cpuinfo and the installed build's system info."""
    report = cpu.system_info()
    assert "REPACK = 1" in report or "CPU :" in report  # the format build_has_amx parses
    p = cpu.plan({})
    assert p == cpu.Plan("auto", cpu.cpu_has_amx(cpu.read_cpuinfo()), cpu.build_has_amx(report), p.mitigate)
    assert p.mitigate is (p.cpu_amx and p.build_amx)
    assert cpu.plan({"SYNTH_LLAMA_AMX": "off"}).mitigate and not cpu.plan({"SYNTH_LLAMA_AMX": "on"}).mitigate


# ---- (b), (c): real generation, each in its own process ----

SCRIPT = textwrap.dedent(
    """
    import ctypes, json, re, sys

    import llama_cpp

    log = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # llama.cpp's own log, even with verbose=False
        log.append(text.decode(errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))

    from synth.llm import cpu
    from synth.llm.local import LocalBackend, default_model_path
    from synth.llm.specs import LocalSpec

    how = sys.argv[1]
    before = cpu.extra_buffer_types()
    if how == "backend":  # synth's own path: LocalBackend._load -> cpu.load_llama
        llm = LocalBackend(LocalSpec(n_ctx=256, n_threads=2)).llm
    else:
        if how == "drop-repack":
            cpu.drop_extra_buffer_types(["CPU_REPACK"])
        elif how == "unreachable":  # as if this build hid ggml's registry: the fallback must kick in
            cpu._extra_bufts = lambda: None
        kwargs = dict(model_path=str(default_model_path()), n_ctx=256, n_threads=2, verbose=False)
        llm = cpu.load_llama(extra_bufts=how != "no-extra-bufts", **kwargs)
    after = cpu.extra_buffer_types()
    out = llm.create_completion(
        "Write a short story about a lighthouse keeper.", max_tokens=32, temperature=0.0, top_k=0, min_p=0.0, seed=1
    )
    buffers = {
        m[1]: float(m[2]) for m in re.finditer(r"(\\S+) model buffer size\\s*=\\s*([\\d.]+) MiB", "".join(log))
    }
    print(json.dumps({
        "plan": cpu.plan().__dict__, "before": before, "after": after, "buffers": buffers,
        "text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"],
    }))
    """
)


@functools.cache
def run(how: str, amx: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != cpu.ENV}
    if amx is not None:
        env[cpu.ENV] = amx
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, how], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"llama.cpp ({how}, {cpu.ENV}={amx}) died of {name}:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def has_flag(flag: str) -> bool:
    return flag in cpu.cpu_flags(cpu.read_cpuinfo())


@pytest.mark.slow
def test_forced_mitigation_generates_and_keeps_repack():
    forced = run("backend", "off")
    assert forced["plan"]["mitigate"]
    assert forced["tokens"] > 0 and forced["text"].strip()
    assert "AMX" not in forced["buffers"] and "AMX" not in forced["after"]  # no weight can reach AMX kernels
    assert forced["after"] == [b for b in forced["before"] if b != "AMX"]  # and nothing else was taken away
    default = run("backend", None)
    # The repack path stays: same CPU_REPACK weights as the default load (12.66 MiB here, the Q4_K
    # attn_output matrices of Gemma 3 270M Q4_K_M; x86 repacks Q4_K from AVX2 up).
    assert forced["buffers"].get("CPU_REPACK") == default["buffers"].get("CPU_REPACK")
    if has_flag("avx2") and "CPU_REPACK" in forced["before"]:
        assert forced["buffers"]["CPU_REPACK"] > 0


@pytest.mark.slow
def test_default_path_on_this_cpu():
    default = run("backend", None)
    assert default["tokens"] > 0 and default["text"].strip()
    if default["plan"]["mitigate"]:  # an AMX CPU with an AMX build: the crash this guards against
        assert "AMX" not in default["buffers"] and "AMX" not in default["after"]
    else:  # nothing to avoid: the load is llama.cpp's own, untouched
        assert default["after"] == default["before"]


@pytest.mark.slow
def test_greedy_output_is_unchanged_by_the_mitigation():
    forced, default = run("backend", "off"), run("backend", None)
    if "AMX" in default["before"] and not default["plan"]["mitigate"]:
        pytest.skip("the default load used AMX kernels: other arithmetic, other greedy text")
    # Here the default load offered no AMX buffer type (no AMX CPU or build, or already mitigated),
    # so taking "AMX" out of the list changes nothing llama.cpp computes with: the same weights in
    # the same buffers (CPU_REPACK included) run the same kernels, and greedy decoding gives the
    # very same text. The prompt tells kernels apart: on the host this was written on, the loads
    # without CPU_REPACK (use_extra_bufts=False, or CPU_REPACK taken out of the list) answer "The
    # story should be about..." where the repacked load answers "Write a short story about...".
    # So the mitigation costs nothing beyond AMX itself.
    assert forced["text"] == default["text"]
    assert forced["buffers"] == default["buffers"]


@pytest.mark.slow
def test_the_list_edit_is_what_llama_cpp_loads_with():
    """Taking CPU_REPACK out the same way as AMX shows that llama.cpp's loader honours the edited
    list. SYNTH_LLAMA_AMX=off takes AMX out too (a no-op where there is none): on an AMX CPU, weights
    left to the AMX buffer type would crash the load this test makes."""
    default = run("backend", None)
    if "CPU_REPACK" not in default["buffers"]:
        pytest.skip("this build and CPU repack none of this model's weights")
    dropped = run("drop-repack", "off")
    assert "CPU_REPACK" not in dropped["after"] and "CPU_REPACK" not in dropped["buffers"]
    assert dropped["tokens"] > 0
    # Same placement as use_extra_bufts=False (every weight in the plain CPU buffer), same kernels,
    # same greedy text.
    last_resort = run("no-extra-bufts", "off")
    assert dropped["buffers"] == last_resort["buffers"] and dropped["text"] == last_resort["text"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["no-extra-bufts", "unreachable"])
def test_last_resort_use_extra_bufts_false(how):
    """extra_bufts=False, and the fallback when the registry is out of reach, load with
    use_extra_bufts=False: no extra buffer type at all, so no AMX and no CPU_REPACK either."""
    result = run(how, "off")
    assert result["tokens"] > 0 and result["text"].strip()
    assert set(result["buffers"]) <= {"CPU", "CPU_Mapped"}, result["buffers"]
