"""`python -m bench` (`make bench`): the whole benchmark in one run, side by side."""

from __future__ import annotations

import gc
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import ceiling, end_to_end, http_api, naive, profile, report, variants
from bench.corpus import DEFAULT_CORPUS, length_stats, load_texts, repeat_to, validation_split
from bench.stages import StageLog
from testing.broker import broker_kind, kafka_broker
from worker.app import GIL_SWITCH_INTERVAL_S
from worker.backends.hardware import SPEED_FLAGS, cgroup_cpus, usable_cpus
from worker.backends.model import DEFAULT_MODEL_DIR, ServedModel, load_from_settings
from worker.backends.runtime import torch_installed
from worker.config import Settings

log = logging.getLogger(__name__)

REPORTED_SETTINGS = (
    "model", "device", "precision", "max_batch_size", "max_wait_ms", "max_length", "token_budget",
    "inference_threads", "torch_interop_threads", "max_in_flight",
    "max_poll_records", "fetch_max_wait_ms", "language_detection",
    "producer_linger_ms", "producer_max_batch_bytes", "producer_compression",
)  # fmt: skip


@dataclass(frozen=True)
class BenchOptions:
    """The bench's sizes. Each stage is bounded in time as well as in size, so that a machine at
    half speed (CPU steal, neighbours) still finishes `make bench` in under 10 minutes: the
    (a)/(b)/shadow runs are sized from a probed rate (`sized_messages`), the latency and naive
    stages run for fixed seconds, each (d) level stops after `http_level_seconds`, and the
    accuracy check scores at most `validation_comments`."""

    messages: int = 50_000  # the most comments per (a), (b) and shadow run
    throughput_seconds: float = 12.0  # ... or what (a) scores in this long at the probed rate
    min_messages: int = 10_000  # ... but never fewer than this
    probe_messages: int = 5000  # the (a) run that measures that rate
    corpus: Path = DEFAULT_CORPUS
    output_dir: Path = Path("bench-results")
    partitions: int = 3
    latency_load: float = 0.5
    latency_seconds: float = 20.0
    naive_messages: int = 3000
    naive_seconds: float = 30.0
    profile: bool = True
    precision_check: bool = True
    repeats: int = 2
    shadow: bool = True  # (b) again with a shadow model attached, alternating with (b)
    shadow_model: str | None = None  # None: the primary's model (BERT-Tiny by default)
    language: bool = True  # (b) again with language detection flipped, alternating with (b)
    torch_baseline: bool = True  # (a) and (b) once more with the torch backend, in the last repeat
    http_clients: tuple[int, ...] = (1, 16, 256)  # (d) concurrent HTTP API clients
    http_requests: int = 3000  # per concurrency level and mode (at least 4 per client)
    http_level_seconds: float = 8.0  # a level sends no more once this long has passed
    http: bool = True
    validation_comments: int | None = 10_000  # accuracy check per variant; None: the split

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        """A smoke run: small corpus, short phases (figures are indicative only)."""
        return cls(**({
            "messages": 2000, "latency_seconds": 3.0, "naive_messages": 200,
            "naive_seconds": 5.0, "repeats": 1, "http_requests": 100, "probe_messages": 500,
            "validation_comments": 2000,
        } | overrides))  # fmt: skip


def machine_info(model: ServedModel) -> dict[str, Any]:
    import aiokafka
    import tokenizers
    import torch
    import transformers

    cpu = model.runtime.cpu
    info = {
        "cpu": cpu.model,
        "cpu_flags": " ".join(sorted(cpu.flags & SPEED_FLAGS)) or "none of " + str(SPEED_FLAGS),
        "cores": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cgroup_cpu_quota": cgroup_cpus() or "none",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "aiokafka": aiokafka.__version__,
        "device": model.backend.device,
        "backend": model.backend.kind,
        "precision": model.backend.precision,
        "torch_threads": torch.get_num_threads(),
        "model": f"{model.contract.model_name} ({model.contract.model_version})",
    }
    if model.backend.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(model.backend.device)
    return info


def _best_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """On a shared machine interference only slows a run down: the fastest is the cleanest."""
    return dict(max(runs, key=lambda r: r["comments_per_s"]))


def _shadow_cost(model: str, without: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """(b) with a shadow attached beside (b) without: best runs of each, and what the shadow
    covered in its best run (a shadow that falls behind skips batches instead of slowing the
    primary, so its coverage belongs next to the throughput)."""
    best = _best_run(runs)
    return {
        "shadow_model": os.path.relpath(model) if Path(model).exists() else model,
        "without_comments_per_s": without["comments_per_s"],
        "with_comments_per_s": best["comments_per_s"],
        "throughput_cost": 1 - best["comments_per_s"] / without["comments_per_s"],
        "runs": [round(r["comments_per_s"], 1) for r in runs],
        "shadow": best["shadow"],
        "run": best,
    }


def _language_cost(
    detection_on: bool, b: dict[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """(b) as configured beside (b) with language detection flipped (the other state): the best
    run of each, and what detection costs in throughput (goal: <= 5 %)."""
    flipped = _best_run(runs)
    on, off = (b, flipped) if detection_on else (flipped, b)
    return {
        "on_comments_per_s": on["comments_per_s"],
        "off_comments_per_s": off["comments_per_s"],
        "throughput_cost": 1 - on["comments_per_s"] / off["comments_per_s"],
        "flipped_to": "off" if detection_on else "on",
        "flipped_runs": [round(r["comments_per_s"], 1) for r in runs],
        "run": flipped,
    }


def torch_baseline_skip(enabled: bool, served_backend: str, installed: bool) -> str | None:
    """Why the bench does not time (a) and (b) with the torch backend beside the served one, or
    None where it does."""
    if not enabled:
        return "disabled (--no-torch-baseline)"
    if served_backend == "torch":
        return "the served backend is already torch: (a) and (b) are the torch figures"
    if not installed:
        return "torch is not installed (the extra `torch`)"
    return None


def torch_baseline(
    served: str, a: dict[str, Any], b: dict[str, Any], a_torch: dict[str, Any],
    b_torch: dict[str, Any], precision: str,
) -> dict[str, Any]:  # fmt: skip
    """(a) and (b) with the torch backend (one run each, in the last repeat) beside the served
    backend's best runs: how much faster the served backend is, model-only and end to end."""
    return {
        "skipped": None,
        "served": served,
        "precision": precision,
        "a_comments_per_s": a_torch["comments_per_s"],
        "b_comments_per_s": b_torch["comments_per_s"],
        "runs": {
            "a": [round(a_torch["comments_per_s"], 1)],
            "b": [round(b_torch["comments_per_s"], 1)],
        },
        "noise": {"a": a_torch.get("noise"), "b": b_torch.get("noise")},
        "b_distinct_outputs": b_torch["distinct_outputs"],
        "over_torch": {
            "a": a["comments_per_s"] / a_torch["comments_per_s"],
            "b": b["comments_per_s"] / b_torch["comments_per_s"],
        },
    }


def _torch_ceiling(
    settings: Settings, texts: list[str], stages: StageLog
) -> tuple[dict[str, Any], str]:
    """(a) with a second ServedModel on the torch backend, loaded in the stage and freed after
    it, so that the later stages (latency, single comment) do not run beside it. Loading it sets
    torch's process-wide threads and denormal flushing (worker/backends/torch_backend.py); both
    go back to what they were (the served backend is not torch), as (c) runs torch in here."""
    import torch

    threads = torch.get_num_threads()
    with stages.stage("(a) model-only ceiling, torch") as noise:
        torch_model = load_from_settings(settings)
        precision = torch_model.backend.precision
        result = ceiling.run_ceiling(torch_model, texts, settings.max_batch_size)
        del torch_model
        gc.collect()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)
    result["noise"] = noise.figures
    return result, precision


def sized_messages(rate: float, options: BenchOptions) -> int:
    """Comments for each (a), (b) and shadow run: what (a) scores in `throughput_seconds` at
    the probed `rate`, within [min(min_messages, messages), messages]. A machine at half speed
    times half the comments instead of taking twice as long; a fast one times `messages`."""
    floor = min(options.min_messages, options.messages)
    return max(floor, min(options.messages, int(rate * options.throughput_seconds)))


def run_bench(settings: Settings, options: BenchOptions) -> dict[str, Any]:
    out = options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stages = StageLog()
    with stages.stage("set-up: corpus, model"):
        unique = load_texts(options.corpus)
        model = load_from_settings(settings)
    # The bench process is also the load generator: with torch and transformers loaded, a full
    # collection of its own would stall the paced producer and show up as worker latency.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as in the worker, for (a)
    machine = machine_info(model)
    with stages.stage("(a) probe: the rate that sizes the runs") as noise:
        probe = ceiling.run_ceiling(
            model, repeat_to(unique, min(options.messages, options.probe_messages)),
            settings.max_batch_size,
        )  # fmt: skip
    probe["noise"] = noise.figures
    texts = repeat_to(unique, sized_messages(probe["comments_per_s"], options))
    log.info("(a) probe: %.0f comments/s, so %d comments per run", probe["comments_per_s"],
             len(texts))  # fmt: skip
    sample = unique[: min(len(unique), 5000)]
    token_lengths = [len(ids) for ids in model.tokenizer.encode(sample)]
    profile_raw = out / "profile.raw.txt" if options.profile else None
    ceilings: list[dict[str, Any]] = []
    saturations: list[dict[str, Any]] = []
    shadowed: list[dict[str, Any]] = []
    flipped_runs: list[dict[str, Any]] = []  # (b) with language detection in the other state
    flipped_state = "off" if settings.language_detection else "on"
    flipped = settings.model_copy(update={"language_detection": not settings.language_detection})
    shadow_model = options.shadow_model or settings.model or str(DEFAULT_MODEL_DIR)
    with_shadow = settings.model_copy(update={"shadow_model": shadow_model})
    torch_skip = torch_baseline_skip(options.torch_baseline, model.backend.kind, torch_installed())
    with_torch = settings.model_copy(update={"backend": "torch"})  # precision as configured
    a_torch: dict[str, Any] | None = None
    b_torch: dict[str, Any] | None = None
    torch_precision = ""
    with kafka_broker(out / "broker.log") as bootstrap:
        # (a) and (b) alternate, `repeats` times each, so that both see the same machine noise;
        # the report gives the best run of each and lists every run.
        for run in range(options.repeats):
            log.info("(a) model-only ceiling on %d comments (run %d)", len(texts), run + 1)
            with stages.stage(f"(a) model-only ceiling, run {run + 1}") as noise:
                ceilings.append(ceiling.run_ceiling(model, texts, settings.max_batch_size))
            ceilings[-1]["noise"] = noise.figures
            log.info("(a) %.0f comments/s", ceilings[-1]["comments_per_s"])
            last = run == options.repeats - 1
            if torch_skip is None and last:
                a_torch, torch_precision = _torch_ceiling(with_torch, texts, stages)
                log.info("(a) torch %s: %.0f comments/s", torch_precision,
                         a_torch["comments_per_s"])  # fmt: skip
            log.info("(b) worker end to end on %d comments (run %d)", len(texts), run + 1)
            with stages.stage(f"(b) worker end to end, run {run + 1}") as noise:
                saturations.append(
                    end_to_end.run_saturation(
                        settings,
                        bootstrap,
                        texts,
                        out,
                        options.partitions,
                        profile_raw if run == options.repeats - 1 else None,
                    )
                )
            saturations[-1]["noise"] = noise.figures
            log.info("(b) %.0f comments/s", saturations[-1]["comments_per_s"])
            if torch_skip is None and last:
                with stages.stage("(b) worker end to end, torch") as noise:
                    b_torch = end_to_end.run_saturation(
                        with_torch, bootstrap, texts, out, options.partitions, None,
                        log_name="worker-saturation-torch.log",
                    )  # fmt: skip
                b_torch["noise"] = noise.figures
                log.info("(b) torch: %.0f comments/s", b_torch["comments_per_s"])
            if options.shadow:
                log.info("(b) with shadow %s on %d comments (run %d)", shadow_model, len(texts),
                         run + 1)  # fmt: skip
                with stages.stage(f"(b) with a shadow model, run {run + 1}") as noise:
                    shadowed.append(
                        end_to_end.run_saturation(
                            with_shadow, bootstrap, texts, out, options.partitions, None
                        )
                    )
                shadowed[-1]["noise"] = noise.figures
                log.info("(b) with shadow: %.0f comments/s", shadowed[-1]["comments_per_s"])
            if options.language:
                name = f"(b) with language detection {flipped_state}, run {run + 1}"
                log.info("%s on %d comments", name, len(texts))
                with stages.stage(name) as noise:
                    flipped_runs.append(
                        end_to_end.run_saturation(
                            flipped, bootstrap, texts, out, options.partitions, None,
                            log_name=f"worker-saturation-language-{flipped_state}.log",
                        )
                    )  # fmt: skip
                flipped_runs[-1]["noise"] = noise.figures
                log.info("%s: %.0f comments/s", name, flipped_runs[-1]["comments_per_s"])
        with stages.stage("single comment") as noise:
            single = ceiling.run_single(model, unique)
        single["noise"] = noise.figures
        log.info("single comment: p50 %.2f ms, p99 %.2f ms", single["p50_ms"], single["p99_ms"])
        a, b = _best_run(ceilings), _best_run(saturations)
        a["runs"] = [round(r["comments_per_s"], 1) for r in ceilings]
        b["runs"] = [round(r["comments_per_s"], 1) for r in saturations]
        shadow = _shadow_cost(shadow_model, b, shadowed) if shadowed else None
        language = (
            _language_cost(settings.language_detection, b, flipped_runs) if flipped_runs else None
        )
        baseline = (
            torch_baseline(
                f"{model.backend.kind} {model.backend.precision}", a, b, a_torch, b_torch,
                torch_precision,
            )
            if a_torch is not None and b_torch is not None
            else {"skipped": torch_skip}
        )  # fmt: skip
        rate = max(1.0, options.latency_load * b["comments_per_s"])
        paced = repeat_to(unique, max(50, int(rate * options.latency_seconds)))
        log.info("(b) latency at %.0f comments/s for %d comments", rate, len(paced))
        with stages.stage("(b) latency at half load") as noise:
            latency = end_to_end.run_latency(
                settings, bootstrap, paced, rate, out, options.partitions
            )
        latency["noise"] = noise.figures
        log.info("(b) p50 %.1f ms, p99 %.1f ms", latency["p50_ms"], latency["p99_ms"])
        log.info("(c) naive baseline")
        with stages.stage("(c) naive consumer") as noise:
            c = naive.run_naive(
                settings, bootstrap, texts[: options.naive_messages], options.naive_seconds,
                options.partitions,
            )  # fmt: skip
        c["noise"] = noise.figures
        log.info("(c) %.1f comments/s", c["comments_per_s"])
        d = None
        if options.http:
            log.info("(d) HTTP API at %s concurrent clients", options.http_clients)
            with stages.stage("(d) HTTP API") as noise:
                d = http_api.run_http_api(
                    settings, bootstrap, unique, out, options.http_clients,
                    options.http_requests, options.http_level_seconds,
                )  # fmt: skip
            for mode, runs in d.items():
                for level in runs["levels"]:
                    log.info(
                        "(d) %s, %d clients: %.0f requests/s, p50 %.1f ms, p99 %.1f ms",
                        mode, level["clients"], level["requests_per_s"], level["p50_ms"],
                        level["p99_ms"],
                    )  # fmt: skip
    compared = None
    if options.precision_check:
        log.info("backends and precisions side by side")
        with stages.stage("backends and precisions") as noise:
            compared = variants.compare_variants(
                settings, model.runtime, unique[:2000],
                validation_split(options.corpus, options.validation_comments), out,
            )  # fmt: skip
        compared["noise"] = noise.figures
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    b_over_a = b["comments_per_s"] / a["comments_per_s"]
    b_over_c = b["comments_per_s"] / c["comments_per_s"]
    gpu = model.backend.device.startswith("cuda")
    goals = {"b >= 0.9a": b_over_a >= 0.9}
    if language is not None:
        goals["language detection costs <= 5 % of (b)"] = language["throughput_cost"] <= 0.05
    if gpu:
        goals |= {
            "b >= 100k/s": b["comments_per_s"] >= 100_000,
            "p99 <= 25 ms": latency["p99_ms"] <= 25,
            "single comment <= 2 ms": single["p50_ms"] <= 2,
        }
    else:
        goals |= {
            "b >= 8c": b_over_c >= 8,
            "p50 <= 40 ms": latency["p50_ms"] <= 40,
            "p99 <= 100 ms": latency["p99_ms"] <= 100,
        }
        goals["start-up minus join <= 5 s"] = b["startup_s"]["ready_minus_join"] <= 5
        if compared is not None:
            best = compared["variants"][compared["best"]]["vs_torch_fp32"]
            goals["best backend >= 1.3x torch fp32 (model-only)"] = best >= 1.3
    results = {
        "started_at": started_at,
        "broker": broker_kind(),
        "probe": probe,
        "ceiling": a,
        "end_to_end": b,
        "latency": latency,
        "single_comment": single,
        "naive": c,
        "shadow": shadow,
        "language": language,
        "torch_baseline": baseline,
        "http_api": d,
        "ratios": {"b_over_a": b_over_a, "b_over_c": b_over_c},
        "goals": goals,
        "runtime": model.runtime.describe(),
        "settings_worker": {
            k: v for k, v in settings.model_dump(mode="json").items() if k in REPORTED_SETTINGS
        },
        "settings_bench": {
            k: os.path.relpath(v) if isinstance(v, Path) else v for k, v in asdict(options).items()
        },
        "machine": machine,
        "corpus": {
            "path": os.path.relpath(options.corpus),  # as a user would type it here
            "unique_texts": len(unique),
            "messages": len(texts),
            "tokens": length_stats(token_lengths),
            "chars": length_stats([len(t) for t in sample]),
        },
        "profile": profile.summarize(profile_raw) if profile_raw else None,
        "variants": compared,
        "noise": stages.summary(),
    }
    report.write_json(results, out / "bench.json")
    report.write_markdown(results, out / "REPORT.md")
    return results
