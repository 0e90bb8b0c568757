"""How noisy the machine was over a stage (`testing.machine_noise`), and how the bench and
`make reliability` report it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.http_api import _numbers
from bench.report import _sizing, noise_table, noise_warning
from bench.runner import BenchOptions, sized_messages
from bench.stages import StageLog
from scripts.reliability import noisy_scenarios, print_machine
from testing.machine_noise import (
    NOISY_STEAL_PCT,
    CpuSample,
    NoiseMeter,
    Snapshot,
    cpu_sample,
    cpu_split,
    describe,
    figures,
    is_noisy,
    parse_cpu_times,
    parse_load1,
    parse_pid_stat,
    process_ticks,
    tree_ticks,
)

# /proc/stat `cpu` lines: user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  1000 0 200 5000 100 0 0 300 50 0\ncpu0 500 0 100 2500 50 0 0 150 25 0\n"
# 1000 ticks later: 400 user+system, 200 idle+iowait, 400 stolen by the hypervisor (40 %)
AFTER = "cpu  1300 0 300 5150 150 0 0 700 90 0\ncpu0 650 0 150 2575 75 0 0 350 45 0\n"


def stage(name: str, steal: float | None, seconds: float = 20.0) -> dict:
    noise = {
        "seconds": seconds, "steal_pct": steal, "busy_pct": 60.0, "own_pct": 45.0,
        "others_pct": 15.0, "load1_start": 1.5, "load1_end": 2.25, "probe_ms_start": 10.0,
        "probe_ms_end": 12.5,
    }  # fmt: skip
    return {"stage": name, **noise, "noisy": is_noisy(noise)}


def test_steal_and_busy_shares_from_two_proc_stat_samples() -> None:
    start = Snapshot(at=10.0, cpu=parse_cpu_times(BEFORE), load1=0.5, own_ticks=1000)
    end = Snapshot(at=15.0, cpu=parse_cpu_times(AFTER), load1=1.75, own_ticks=1300, probe_ms=9.5)
    noise = figures(start, end)
    assert noise == {
        "seconds": 5.0, "steal_pct": 40.0, "busy_pct": 40.0, "own_pct": 30.0,
        "others_pct": 10.0, "load1_start": 0.5, "load1_end": 1.75, "probe_ms_start": None,
        "probe_ms_end": 9.5,
    }  # fmt: skip
    assert is_noisy(noise)
    # guest time is part of user time already: it does not count twice
    assert parse_cpu_times(BEFORE).total == 1000 + 200 + 5000 + 100 + 300


def test_figures_degrade_without_proc_stat() -> None:
    start = Snapshot(at=0.0, cpu=None, load1=None, own_ticks=None)
    end = Snapshot(at=2.0, cpu=parse_cpu_times(AFTER), load1=0.3, own_ticks=None)
    noise = figures(start, end)
    assert noise["seconds"] == 2.0 and noise["load1_end"] == 0.3
    assert noise["steal_pct"] is None and noise["busy_pct"] is None
    assert not is_noisy(noise)
    assert describe(noise).startswith("steal n/a")
    assert parse_cpu_times("intr 1 2 3\n") is None
    assert parse_load1("") is None and parse_load1("0.42 0.30 0.20 1/99 7") == 0.42


def test_noisy_only_above_the_threshold() -> None:
    assert not is_noisy({"steal_pct": NOISY_STEAL_PCT})
    assert is_noisy({"steal_pct": NOISY_STEAL_PCT + 0.1})
    assert not is_noisy({"steal_pct": None}) and not is_noisy(None)
    assert is_noisy({"steal_pct": 3.0}, threshold=2.5)
    assert "NOISY" in describe({"steal_pct": 35.0, "load1_start": 1.0, "load1_end": 2.0})
    assert "NOISY" not in describe({"steal_pct": 10.0, "load1_start": 1.0, "load1_end": 2.0})


def test_meter_reads_a_proc_directory_around_a_stage(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text(BEFORE)
    (tmp_path / "loadavg").write_text("0.50 0.40 0.30 2/100 99\n")
    with NoiseMeter(proc=tmp_path) as meter:
        (tmp_path / "stat").write_text(AFTER)  # what the kernel counted meanwhile
        (tmp_path / "loadavg").write_text("1.75 0.60 0.35 3/101 100\n")
    assert meter.figures["steal_pct"] == 40.0 and meter.figures["busy_pct"] == 40.0
    assert (meter.figures["load1_start"], meter.figures["load1_end"]) == (0.5, 1.75)
    assert meter.figures["noisy"] is True
    # without /proc: no steal, and not flagged
    bare = NoiseMeter(proc=tmp_path / "absent").begin().end()
    assert bare["steal_pct"] is None and bare["noisy"] is False


def test_pid_stat_and_the_process_tree(tmp_path: Path) -> None:
    def pid(n: int, parent: int, comm: str, ticks: tuple[int, int, int, int]) -> None:
        (tmp_path / str(n)).mkdir()
        rest = " ".join(["S", str(parent)] + ["0"] * 9 + [str(t) for t in ticks] + ["20", "0"])
        (tmp_path / str(n) / "stat").write_text(f"{n} ({comm}) {rest}\n")

    pid(100, 1, "bench", (1000, 1000, 0, 0))  # the root itself: not counted
    pid(101, 100, "python -m worker (run)", (30, 10, 5, 5))  # a child with odd name: 50
    pid(102, 101, "tansu", (7, 3, 0, 0))  # a grandchild: 10
    pid(200, 1, "someone else", (999, 999, 0, 0))
    assert parse_pid_stat((tmp_path / "101" / "stat").read_text()) == (100, 50)
    assert tree_ticks(100, tmp_path) == 60
    assert tree_ticks(101, tmp_path) == 10
    assert tree_ticks(100, tmp_path / "absent") is None


def test_cpu_split_in_cpus_per_process_and_the_rest(tmp_path: Path) -> None:
    def write(worker: tuple[int, int], bench: tuple[int, int]) -> None:
        for n, (user, system) in ((101, worker), (100, bench)):
            (tmp_path / str(n)).mkdir(exist_ok=True)
            fields = ["S", "1"] + ["0"] * 9 + [str(user), str(system), "400", "400", "20", "0"]
            (tmp_path / str(n) / "stat").write_text(f"{n} (py (x)) {' '.join(fields)}\n")

    pids = {"worker": 101, "bench": 100, "gone": 999}
    (tmp_path / "stat").write_text(BEFORE)
    write(worker=(500, 100), bench=(50, 10))
    start = cpu_sample(pids, tmp_path)
    (tmp_path / "stat").write_text(AFTER)  # 400 ticks busy, 400 stolen: not counted as busy
    write(worker=(700, 150), bench=(80, 20))  # children's ticks (400 each) are left out
    end = cpu_sample(pids, tmp_path)
    end = CpuSample(start.at + 2.0, end.cpu, end.processes)
    split = cpu_split(start, end, ticks_per_s=100)  # 2 s of 100 ticks: 200 ticks = 1 CPU
    assert split == {
        "seconds": 2.0, "worker": 1.25, "bench": 0.2, "gone": None, "busy": 2.0, "rest": 0.55,
    }  # fmt: skip
    assert process_ticks(101, tmp_path) == 850 and process_ticks(999, tmp_path) is None


def test_the_real_machine_gives_figures_or_none() -> None:
    with NoiseMeter() as meter:
        sum(i * i for i in range(200_000))
    noise = meter.figures
    assert noise["seconds"] >= 0
    assert noise["probe_ms_start"] > 0 and noise["probe_ms_end"] > 0  # the loop ran, timed
    if os.path.exists("/proc/stat"):
        assert 0 <= noise["steal_pct"] <= 100 and 0 <= noise["busy_pct"] <= 100
        assert noise["own_pct"] + noise["others_pct"] == pytest.approx(noise["busy_pct"], 0.2)


def test_stage_log_records_every_stage_even_a_failing_one() -> None:
    stages = StageLog()
    with stages.stage("first"):
        pass
    with pytest.raises(RuntimeError), stages.stage("second"):
        raise RuntimeError("the stage broke")
    summary = stages.summary()
    assert [s["stage"] for s in summary["stages"]] == ["first", "second"]
    assert summary["noisy_steal_pct"] == NOISY_STEAL_PCT
    assert all("steal_pct" in s and "load1_end" in s for s in summary["stages"])


def test_report_prints_noise_beside_each_stage_and_warns() -> None:
    noise = {
        "noisy_steal_pct": NOISY_STEAL_PCT,
        "stages": [stage("(a) model-only ceiling, run 1", 35.2), stage("(c) naive consumer", 2.0)],
        "noisy_stages": ["(a) model-only ceiling, run 1"],
        "total_seconds": 40.0,
    }
    table = "\n".join(noise_table(noise))
    noisy_row = (
        "| (a) model-only ceiling, run 1 | 20.0 | 35.2 | 1.50 → 2.25 | 60 | 15 | 10.0 → 12.5 "
        "| **noisy** |"
    )
    assert noisy_row in table
    assert "| (c) naive consumer | 20.0 | 2.0 | 1.50 → 2.25 | 60 | 15 | 10.0 → 12.5 | no |" in table
    warning = "\n".join(noise_warning(noise))
    assert "1 of 2 stages" in warning and "(a) model-only ceiling, run 1" in warning
    assert noise_warning(noise | {"noisy_stages": []}) == []


def test_reliability_report_flags_noisy_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    results = [
        {"scenario": "kill -9", "machine_noise": stage("x", 12.5)},
        {"scenario": "overload", "machine_noise": stage("x", 4.0)},
        {"scenario": "freeze", "error": "boom"},
    ]
    report = {"machine": {"cpu": "Some CPU"}, "results": results}
    report["noisy_scenarios"] = noisy_scenarios(results)
    assert report["noisy_scenarios"] == ["kill -9"]
    print_machine(report)
    out = capsys.readouterr().out
    assert "kill -9: steal 12.5 % (NOISY), load 1.50→2.25" in out
    assert "overload: steal 4.0 %, load 1.50→2.25" in out
    assert "freeze: noise not measured" in out
    assert "NOISY (CPU steal): kill -9" in out


def test_throughput_runs_are_sized_by_the_probed_rate() -> None:
    options = BenchOptions(messages=50_000, throughput_seconds=12.0, min_messages=10_000)
    assert sized_messages(3500.0, options) == 42_000  # half speed: 12 s, not 14 s
    assert sized_messages(1750.0, options) == 21_000
    assert sized_messages(9000.0, options) == 50_000  # a fast machine: the full corpus
    assert sized_messages(100.0, options) == 10_000  # never fewer than the floor
    assert sized_messages(100.0, BenchOptions(messages=300)) == 300  # nor more than asked


def test_report_says_how_the_runs_were_sized() -> None:
    options = BenchOptions()
    results = {
        "probe": {"comments_per_s": 1750.4, "messages": 5000},
        "corpus": {"messages": sized_messages(1750.4, options)},
        "settings_bench": {"throughput_seconds": 12.0, "min_messages": 10_000, "messages": 50_000},
    }
    [sentence, _] = _sizing(results)
    assert "timed 21,004 comments" in sentence and "5,000-comment probe measured (1,750/s)" in (
        sentence
    )
    assert "within 10,000 to 50,000" in sentence
    assert _sizing({"settings_bench": {}, "corpus": {}}) == []  # a bench.json from before


def test_http_levels_stop_taking_requests_after_their_time() -> None:
    assert list(_numbers(10, 3, None)) == list(range(10))
    assert list(_numbers(10, 3, 60.0)) == list(range(10))
    assert list(_numbers(10, 3, 0.0)) == [0, 1, 2]  # time is up: only the minimum
