"""`make reliability`: the full fault-injection run, its report printed and in JSON.

    python scripts/reliability.py [--messages 100000] [--kills 10] [--freeze-s 60]
        [--overload-s 60] [--model default|tiny]
        [--only hostile,policy,http,kill9,freeze,overload,sigterm,rebalance]

Runs against its own tansu broker on 127.0.0.1 (or KAFKA_BOOTSTRAP_SERVERS for everything but
the freeze, which needs a broker process it can SIGSTOP). Writes
reliability-results/report.json and exits non-zero if any promise broke.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.broker import TansuBroker  # noqa: E402
from testing.machine_noise import NoiseMeter, describe, machine_description  # noqa: E402
from testing.models import build_tiny_model  # noqa: E402
from testing.reliability import scenarios  # noqa: E402
from testing.reliability.catalog import catalog  # noqa: E402
from testing.reliability.http_probe import hostile_http  # noqa: E402

SCENARIOS = ["hostile", "policy", "http", "kill9", "sigterm", "rebalance", "freeze", "overload"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--freeze-s", type=float, default=60)
    parser.add_argument("--overload-s", type=float, default=60)
    parser.add_argument("--overload-factor", type=float, default=10)
    parser.add_argument("--rss-headroom-mib", type=float, default=300)
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=REPO / "reliability-results")
    return parser.parse_args()


def hostile(bootstrap: str, workdir: Path, model: str | None) -> dict:
    """The hostile-input catalog through the real worker (same test as in `make test`)."""
    import subprocess

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/reliability/test_hostile.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    figures = {"scenario": "hostile input", "catalog_cases": len(catalog()), "pytest": last,
               "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    return figures


def policy(bootstrap: str, workdir: Path, model: str | None) -> dict:
    """Hostile policy files against a real worker hot-reloading them, the full catalog
    (testing/reliability/policy_files.py; reduced in `make test`)."""
    from testing.reliability.policy_files import probe_policy_files
    from testing.topics import fresh_topics

    topics = fresh_topics(bootstrap, "policy", partitions=1)
    figures = probe_policy_files(bootstrap, topics, workdir, model=model, full=True)
    outcomes, expected = figures["outcomes"], figures["expected"]
    figures["as_expected"] = sum(outcomes.get(name) == want for name, want in expected.items())
    assert figures["outcomes"] == figures["expected"], f"outcomes: {figures['outcomes']}"
    assert not figures["canary_in_log"], "a policy file's content reached the log"
    assert figures["healthz_failures"] == 0, f"/healthz failed {figures['healthz_failures']}x"
    return figures


def main() -> int:
    args = parse_args()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="reliability-", dir=args.out))
    model = None if args.model == "default" else str(build_tiny_model(workdir / "tiny-model"))
    env = {"MODERATION_SHUTDOWN_GRACE_S": "25"}
    results: list[dict] = []
    failures: list[str] = []
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = TansuBroker(workdir / "broker.log")
        bootstrap = broker.bootstrap
    runs = {
        "hostile": lambda: hostile(bootstrap, workdir, model),
        "policy": lambda: policy(bootstrap, workdir / "policy", model),
        "http": lambda: hostile_http(bootstrap, workdir / "http", model, env),
        "kill9": lambda: scenarios.kill9(
            bootstrap, workdir / "kill9", messages=args.messages, kills=args.kills,
            model=model, env=env, seed=int(time.time()),
        ),
        "sigterm": lambda: scenarios.sigterm(
            bootstrap, workdir / "sigterm", messages=min(args.messages, 30_000), model=model,
            env=env,
        ),
        "rebalance": lambda: scenarios.join_leave(
            bootstrap, workdir / "rebalance", messages=min(args.messages, 30_000), model=model,
            env=env,
        ),
        "freeze": lambda: scenarios.broker_freeze(
            workdir / "freeze", messages=min(args.messages, 20_000), freeze_s=args.freeze_s,
            model=model, env=env,
        ),
        "overload": lambda: scenarios.overload(
            bootstrap, workdir / "overload", factor=args.overload_factor,
            duration_s=args.overload_s, model=model, env=env,
            rss_headroom_mib=args.rss_headroom_mib,
        ),
    }  # fmt: skip
    try:
        for name in wanted:
            print(f"== {name} ...", flush=True)
            started = time.monotonic()
            noise = NoiseMeter().begin()  # steal, load, other processes over the scenario
            try:
                figures = runs[name]()
            except AssertionError as exc:
                figures = {"scenario": name, "failed": str(exc)[:2000]}
                failures.append(name)
            except Exception:
                figures = {"scenario": name, "error": traceback.format_exc()[-2000:]}
                failures.append(name)
            figures["wall_s"] = round(time.monotonic() - started, 1)
            figures["machine_noise"] = noise.end()
            results.append(figures)
            print(json.dumps(figures, indent=1), flush=True)
    finally:
        if broker is not None:
            broker.close()
    report = {
        "machine": machine_description(),
        "noisy_scenarios": noisy_scenarios(results),
        "model": args.model,
        "broker": "tansu (own process)" if broker else bootstrap,
        "results": results,
        "totals": {
            "messages": sum(r.get("messages", 0) for r in results),
            "crashes": sum(r.get("crashes", 0) for r in results),
            "lost": sum(r.get("lost", 0) for r in results),
            "duplicates": sum(r.get("duplicates", 0) for r in results),
            "peak_rss_mib": max((r.get("peak_rss_mib", 0) for r in results), default=0),
        },
        "failed": failures,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    return 1 if failures else 0


def noisy_scenarios(results: list[dict]) -> list[str]:
    """Scenarios run while the hypervisor took more than NOISY_STEAL_PCT % of the CPU."""
    return [r["scenario"] for r in results if r.get("machine_noise", {}).get("noisy")]


def print_machine(report: dict) -> None:
    """The machine, and each scenario's steal and load (flagged noisy above the threshold)."""
    print(", ".join(f"{k}: {v}" for k, v in report["machine"].items()))
    print("machine over each scenario (CPU steal, 1-min load start→end, other processes):")
    for r in report["results"]:
        print(f"  {r['scenario']}: {describe(r.get('machine_noise'))}")
    if report["noisy_scenarios"]:
        print(f"NOISY (CPU steal): {', '.join(report['noisy_scenarios'])}")


def print_summary(report: dict) -> None:
    print("\n== reliability report ==")
    print_machine(report)
    for r in report["results"]:
        name = r["scenario"]
        keys = ["messages", "crashes", "lost", "duplicates", "duplicates_bound", "unexpected",
                "peak_rss_mib", "rss_bound_mib", "recovery_ready_max_s", "recovery_progress_max_s",
                "behaviour", "recovered_after_thaw_s", "peak_lag", "drained_after_load_s",
                "sustainable_rate_per_s", "offered_rate_per_s", "offered_factor", "duration_s",
                "exit_code", "stop_s", "catalog_cases", "pytest", "cases", "as_expected",
                "healthz_worst_ms", "healthz_worst_s", "rss_before_mib", "rss_after_mib", "failed",
                "error", "wall_s"]  # fmt: skip
        shown = ", ".join(f"{k}={r[k]}" for k in keys if k in r)
        print(f"- {name}: {shown}")
    t = report["totals"]
    print(
        f"TOTAL messages={t['messages']} crashes={t['crashes']} lost={t['lost']} "
        f"duplicates={t['duplicates']} peak_rss_mib={t['peak_rss_mib']} "
        f"failed={report['failed'] or 'none'}"
    )


if __name__ == "__main__":
    sys.exit(main())
