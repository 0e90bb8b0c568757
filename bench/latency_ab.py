"""`python -m bench.latency_ab`: only the latency stage of `make bench`, for variants side by side.

Each variant is a set of MODERATION_* overrides; the variants run one after the other in each
round (A, B, A, B, ...) at the same paced rate, so that they see the same machine noise. Prints
and writes (`--output`) each run's p50/p99, its budget per stage (bench/latency_budget.py), its
batches and the machine's steal and load over it.

    python -m bench.latency_ab --rate 900 --variant base: --variant linger0:PRODUCER_LINGER_MS=0
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.corpus import DEFAULT_CORPUS, load_texts, repeat_to
from bench.end_to_end import run_latency
from testing.broker import kafka_broker
from testing.machine_noise import NoiseMeter
from worker.cli import OneLineErrorParser
from worker.config import SettingsError, load_settings

log = logging.getLogger("bench.latency_ab")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`name:KEY=VALUE,KEY=VALUE` (KEY without the MODERATION_ prefix) -> (name, overrides)."""
    name, _, rest = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"a variant needs a name: {text!r}")
    overrides = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"not KEY=VALUE: {pair!r} in {text!r}")
        overrides[f"MODERATION_{key.upper()}"] = value
    return name, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m bench.latency_ab", description=__doc__)
    parser.add_argument("--rate", type=float, required=True, help="comments/s offered")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--pin", default=None, help="CPUs for the worker, as taskset -c: 0 or 0,1")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench-results/latency_ab.json"))
    return parser


def summary_line(name: str, run: dict[str, Any]) -> str:
    stages = run["budget"]["stages"]
    parts = " ".join(
        f"{stage} {row['mean_ms']:.1f}/{row['p99_ms'] or 0:.0f}"
        for stage, row in stages.items()
        if row["mean_ms"] is not None
    )
    noise, cpu = run["noise"], run.get("cpu") or {}
    return (
        f"{name:>12}: p50 {run['p50_ms']:6.1f} p99 {run['p99_ms']:6.1f} ms | "
        f"batches {run['batches']['batches']} x {run['batches']['mean_batch_size']:.1f} | "
        f"mean/p99 ms: {parts} | steal {noise.get('steal_pct')} % load "
        f"{noise.get('load1_start')}->{noise.get('load1_end')} others {noise.get('others_pct')} %"
        f" | CPUs: worker {cpu.get('worker')} bench {cpu.get('bench')} rest {cpu.get('rest')}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"bench.latency_ab: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pin = None if args.pin is None else {int(cpu) for cpu in args.pin.split(",")}
    texts = repeat_to(load_texts(args.corpus), max(50, int(args.rate * args.seconds)))
    runs: list[dict[str, Any]] = []
    out = args.output.parent
    out.mkdir(parents=True, exist_ok=True)
    with kafka_broker(out / "broker-latency-ab.log") as bootstrap:
        for round_ in range(args.rounds):
            for name, overrides in args.variant:
                with NoiseMeter() as noise:
                    run = run_latency(
                        settings, bootstrap, texts, args.rate, out, args.partitions,
                        overrides, pin, log_name=f"worker-latency-{name}.log",
                    )  # fmt: skip
                run |= {"variant": name, "round": round_ + 1, "overrides": overrides}
                run["noise"] = noise.figures
                runs.append(run)
                log.info("%s", summary_line(name, run))
    args.output.write_bytes(orjson.dumps(runs, option=orjson.OPT_SERIALIZE_NUMPY))
    print("\nround by round:")
    for run in runs:
        print(f"r{run['round']} " + summary_line(run["variant"], run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
