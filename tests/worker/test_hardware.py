"""Settings chosen from the machine: synthetic CPUs and cgroup files, no real hardware assumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.backends.hardware import (
    Choice,
    CpuInfo,
    cfs_quota,
    cgroup_cpus,
    choose_precision,
    choose_threads,
    cpu_quota,
    parse_cpuinfo,
    read_cpu,
    usable_cpus,
)

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi1 bmi2"
AMX = "avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8"
SAPPHIRE_RAPIDS = CpuInfo("Intel(R) Xeon(R) Platinum 8480+", frozenset(f"{AVX2} {AMX}".split()))
COOPER_LAKE = CpuInfo(
    "Intel(R) Xeon(R) Platinum 8380H", frozenset(f"{AVX2} avx512f avx512_bf16".split())
)
SKYLAKE = CpuInfo("Intel(R) Xeon(R) Gold 6148", frozenset(f"{AVX2} avx512f avx512bw".split()))
EPYC_ROME = CpuInfo("AMD EPYC 7R32", frozenset(AVX2.split()))
GRAVITON = CpuInfo("", frozenset({"fp", "asimd", "crc32", "atomics"}))


# --- /proc/cpuinfo ----------------------------------------------------------------------------

X86_CPUINFO = f"""processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: {AVX2} amx_bf16 amx_tile

processor\t: 1
model name\t: Something Else
flags\t\t: fpu
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes bf16 i8mm
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_x86_takes_the_first_processor() -> None:
    info = parse_cpuinfo(X86_CPUINFO)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "amx_bf16", "amx_tile"} <= info.flags
    assert "fpu" in info.flags and "Something" not in info.model
    assert info.native_bf16 == {"amx_bf16"}


def test_parse_cpuinfo_arm_features() -> None:
    info = parse_cpuinfo(ARM_CPUINFO)
    assert info.model == ""
    assert {"asimd", "bf16", "i8mm"} <= info.flags
    assert info.native_bf16 == frozenset()  # the rule names x86 flags only


def test_read_cpu_falls_back_when_proc_is_missing(tmp_path: Path) -> None:
    info = read_cpu(tmp_path / "no-cpuinfo")
    assert info.model  # platform.processor() / machine(), never empty
    assert info.flags == frozenset()


def test_read_cpu_real_machine() -> None:
    info = read_cpu()
    assert isinstance(info, CpuInfo) and info.model
    if Path("/proc/cpuinfo").exists() and os.uname().machine == "x86_64":
        assert "sse2" in info.flags


# --- precision --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (SAPPHIRE_RAPIDS, "bf16"),  # AMX
        (COOPER_LAKE, "bf16"),  # AVX512-BF16 without AMX
        (SKYLAKE, "fp32"),  # AVX-512 but no bf16
        (EPYC_ROME, "fp32"),  # AVX2 only
        (GRAVITON, "fp32"),
    ],
)
def test_auto_precision_on_cpu_needs_native_bf16(cpu: CpuInfo, expected: str) -> None:
    choice = choose_precision("auto", "cpu", cpu)
    assert choice.value == expected
    assert choice.reason.startswith("auto")


def test_auto_precision_reason_names_the_flag() -> None:
    assert "amx_bf16" in choose_precision("auto", "cpu", SAPPHIRE_RAPIDS).reason
    assert "no native bf16" in choose_precision("auto", "cpu", EPYC_ROME).reason


@pytest.mark.parametrize(
    ("device", "cuda_bf16", "expected"),
    [("cuda", True, "bf16"), ("cuda", False, "fp16"), ("cuda:1", True, "bf16")],
)
def test_auto_precision_on_cuda(device: str, cuda_bf16: bool, expected: str) -> None:
    # the host CPU does not matter on CUDA, even one without bf16
    assert choose_precision("auto", device, EPYC_ROME, cuda_bf16=cuda_bf16).value == expected


@pytest.mark.parametrize("value", ["fp32", "bf16", "fp16", "int8"])
@pytest.mark.parametrize("cpu", [SAPPHIRE_RAPIDS, EPYC_ROME])
def test_explicit_precision_passes_through(value: str, cpu: CpuInfo) -> None:
    for device in ("cpu", "cuda"):
        choice = choose_precision(value, device, cpu, cuda_bf16=True)
        assert choice.value == value
        assert choice.reason.startswith("set explicitly")


def test_explicit_bf16_on_cpu_without_it_says_so() -> None:
    assert "emulated" in choose_precision("bf16", "cpu", EPYC_ROME).reason
    assert choose_precision("bf16", "cpu", SAPPHIRE_RAPIDS).reason == "set explicitly"


def test_int8_is_never_automatic() -> None:
    for cpu in (SAPPHIRE_RAPIDS, COOPER_LAKE, SKYLAKE, EPYC_ROME, GRAVITON):
        for device in ("cpu", "cuda"):
            for bf16 in (True, False):
                assert choose_precision("auto", device, cpu, cuda_bf16=bf16).value != "int8"


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision"):
        choose_precision("fp8", "cpu", EPYC_ROME)


def test_precision_is_case_insensitive() -> None:
    assert choose_precision("AUTO", "CPU", SAPPHIRE_RAPIDS).value == "bf16"
    assert choose_precision(" Int8 ", "cpu", EPYC_ROME).value == "int8"


# --- cgroups ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000", None),
        ("max 100000\n", None),
        ("150000 100000", 1.5),
        ("200000 100000\n", 2.0),
        ("50000 100000", 0.5),
        ("", None),
        ("garbage", None),
        ("0 100000", None),
    ],
)
def test_cpu_quota_v2(text: str, expected: float | None) -> None:
    assert cpu_quota(text) == expected


def test_cfs_quota_v1() -> None:
    assert cfs_quota("-1\n", "100000\n") is None
    assert cfs_quota("250000\n", "100000\n") == 2.5


def test_cgroup_cpus_v2_file(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cgroup_cpus(tmp_path) == 3.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None


def test_cgroup_cpus_v1_files(tmp_path: Path) -> None:
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path) == 1.5


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpus(tmp_path) is None


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == affinity  # no quota files
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path) == 0.5
    (tmp_path / "cpu.max").write_text(f"{(affinity + 4) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == affinity


def test_usable_cpus_real_machine() -> None:
    usable = usable_cpus()
    assert 0 < usable <= len(os.sched_getaffinity(0))


# --- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usable", "expected"),
    [
        (0.5, 1),
        (1.0, 1),
        (1.5, 1),
        (2.0, 1),
        (2.9, 1),
        (3.0, 2),
        (4.0, 3),
        (8.0, 7),
        (16.5, 15),
    ],
)
def test_auto_threads_leave_one_cpu_from_two(usable: float, expected: int) -> None:
    choice = choose_threads("auto", usable)
    assert choice.value == expected
    assert choice.reason.startswith("auto")


def test_auto_thread_reasons() -> None:
    assert "one left for the event loop" in choose_threads("auto", 8).reason
    assert "8 usable CPUs" in choose_threads("auto", 8).reason
    assert "one left for the event loop" in choose_threads("auto", 2).reason
    assert "too few" in choose_threads("auto", 1.5).reason


@pytest.mark.parametrize("requested", [1, 3, 64, "4"])
def test_explicit_threads_pass_through(requested: int | str) -> None:
    assert choose_threads(requested, 2.0) == Choice(int(requested), "set explicitly")


@pytest.mark.parametrize("requested", [0, -1, "0", "many"])
def test_bad_thread_counts_are_refused(requested: int | str) -> None:
    with pytest.raises(ValueError, match="threads"):
        choose_threads(requested, 4.0)


def test_choice_prints_value_and_reason() -> None:
    assert str(Choice("bf16", "auto: native bf16")) == "bf16 (auto: native bf16)"
