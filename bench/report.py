"""The benchmark's outputs: `bench.json` (everything) and `REPORT.md` (the short version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench.latency_budget import budget_table
from testing.machine_noise import describe, is_noisy


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _budget_section(lat: dict[str, Any]) -> list[str]:
    """The latency stage's budget per stage (bench/latency_budget.py), if it was measured."""
    budget = lat.get("budget")
    if not budget:
        return []
    batches = lat.get("batches") or {}
    return [
        "**Latency budget at half load** (`moderation_stage_seconds{stage}`, the latency stage's "
        "delta; `generator`: the bench's send → the input record's timestamp; p50/p99 "
        "bucket-interpolated; `ack` comes after the bench's clock). Batches: "
        f"{batches.get('batches', 'n/a')}, mean size {_f(batches.get('mean_batch_size'), 1)}.",
        "",
        *budget_table(budget),
        "",
        *_cpu_line(lat.get("cpu")),
    ]


def _cpu_line(cpu: dict[str, Any] | None) -> list[str]:
    """Where the machine's CPU went over the latency stage (`testing.machine_noise.cpu_split`):
    the worker shares the machine with the bench's load generator and, here, the broker."""
    if not cpu or cpu.get("busy") is None:
        return []
    return [
        f"CPU over the latency stage, in CPUs: worker {_f(cpu.get('worker'), 2)}, the bench "
        f"(load generator) {_f(cpu.get('bench'), 2)}, the rest (the broker when it runs here, "
        f"other processes) {_f(cpu.get('rest'), 2)}; busy {_f(cpu['busy'], 2)} in all.",
        "",
    ]


def markdown(r: dict[str, Any]) -> str:
    a, b, c = r["ceiling"], r["end_to_end"], r["naive"]
    lat, ratios, machine = r["latency"], r["ratios"], r["machine"]
    goals = r["goals"]
    lines = [
        "# Benchmark: moderation worker",
        "",
        f"{r['started_at']} · {machine['cpu']} · {machine['cores']} cores · device "
        f"`{machine['device']}` · {r['corpus']['messages']:,} messages · broker {r['broker']}",
        "",
        f"CPU flags: {machine.get('cpu_flags', 'n/a')} · usable CPUs "
        f"{machine.get('usable_cpus', 'n/a')} · cgroup CPU quota "
        f"{machine.get('cgroup_cpu_quota', 'n/a')}",
        "",
        *noise_warning(r.get("noise")),
        "| figure | comments/s | machine over the (best) run |",
        "|---|---:|---|",
        f"| (a) model-only ceiling (tokenize + infer, worker batching, no Kafka) "
        f"| {_f(a['comments_per_s'])} | {describe(a.get('noise'))} |",
        *_torch_row(r.get("torch_baseline"), "a"),
        f"| (b) worker end to end (produced first, until every score acknowledged) "
        f"| {_f(b['comments_per_s'])} | {describe(b.get('noise'))} |",
        *_torch_row(r.get("torch_baseline"), "b"),
        f"| (c) naive consumer (one message at a time, `transformers.pipeline`, commit each) "
        f"| {_f(c['comments_per_s'], 1)} | {describe(c.get('noise'))} |",
        *_shadow_row(r.get("shadow")),
        *_language_row(r.get("language")),
        "",
        *_sizing(r),
        f"Best of {len(a.get('runs', [1]))} alternating runs each for (a) and (b): a runs "
        f"{a.get('runs')}, b runs {b.get('runs')}. "
        f"Ratios: **b/a = {ratios['b_over_a']:.2f}** (goal ≥ 0.9), "
        f"**b/c = {ratios['b_over_c']:.1f}x** (goal ≥ 8 on a 2-core CPU).",
        "",
        f"Latency at {lat['offered_rate']:,.0f} comments/s offered "
        f"({r['settings_bench']['latency_load']:.0%} of b) for {lat['seconds']:.0f} s, "
        f"{lat['received']:,}/{lat['messages']:,} scored: "
        f"**p50 {lat['p50_ms']:.1f} ms · p95 {lat['p95_ms']:.1f} ms · p99 {lat['p99_ms']:.1f} ms** "
        f"(max {lat['max_ms']:.1f} ms; goal p99 ≤ 100 ms). Measured from the bench's send to the "
        "worker's publish of the score (output record timestamp, ms resolution). The worker's own "
        "histogram (record timestamp → broker ack, bucket-interpolated): "
        + ", ".join(f"{k} {_f(v, 1)} ms" for k, v in lat["worker_histogram_ms"].items())
        + f". Machine: {describe(lat.get('noise'))}.",
        "",
        *_budget_section(lat),
        f"Single comment (tokenize + infer one at a time, {r['single_comment']['comments']} "
        f"real comments): p50 {r['single_comment']['p50_ms']:.2f} ms, p99 "
        f"{r['single_comment']['p99_ms']:.2f} ms (the 2021 write-up: ~6 ms; GPU goal ≤ 2 ms). "
        f"Machine: {describe(r['single_comment'].get('noise'))}.",
        "",
        *_shadow_paragraph(r.get("shadow")),
        *_language_paragraph(r.get("language")),
        *_torch_paragraph(r.get("torch_baseline")),
        "Start-up (s, from process start; `moderation_startup_seconds`): "
        + ", ".join(f"{k} {v:.2f}" for k, v in b.get("startup_s", {}).items())
        + " (goal: ready minus the group join ≤ 5 s on CPU).",
        "",
        "Goals: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in goals.items()),
        "",
        "## Settings",
        "",
        "Chosen at start (worker/backends/runtime.py): "
        + "; ".join(f"{k}: {v}" for k, v in r["runtime"].items())
        + ".",
        "",
        "Worker: "
        + ", ".join(f"`{k}={v}`" for k, v in r["settings_worker"].items())
        + ". Bench: "
        + ", ".join(f"`{k}={v}`" for k, v in r["settings_bench"].items())
        + ".",
        "",
        f"Corpus: `{r['corpus']['path']}`, {r['corpus']['unique_texts']:,} real comments repeated "
        f"to {r['corpus']['messages']:,}; tokens per comment (truncated at max_length) "
        + ", ".join(f"{k} {v}" for k, v in r["corpus"]["tokens"].items())
        + ".",
        "",
        "## Machine",
        "",
        ", ".join(f"{k}: {v}" for k, v in machine.items()),
        "",
        "## Where the time goes (end-to-end run)",
        "",
        f"Worker stages over the saturation run: {b['stages']['batches']:,} batches, mean "
        f"{b['stages']['mean_batch_size']:.1f} comments; tokenization "
        f"{b['stages']['tokenize_share_of_wall']:.0%} and inference "
        f"{b['stages']['infer_share_of_wall']:.0%} of wall time; ceiling run: tokenization "
        f"{a['tokenize_share']:.0%}, inference {a['infer_share']:.0%}.",
        "",
    ]
    http = r.get("http_api")
    http_noise = _stage_noise(r.get("noise"), "(d) HTTP API")
    if http:
        lines += [
            "## (d) Perspective-compatible HTTP API (`comments:analyze`)",
            "",
            "Concurrent clients (asyncio + aiohttp, back to back) against a fresh worker with "
            "`MODERATION_HTTP_API_PORT` set, real comments, TOXICITY and INSULT; latency as the "
            "client sees it. Batched: the worker's `MAX_BATCH_SIZE`; one at a time: "
            "`MAX_BATCH_SIZE=1`. Machine over the stage: "
            f"{describe(http_noise)}.",
            "",
            "| mode | clients | requests/s | p50 ms | p99 ms | texts per batch | answers |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for mode, runs in http.items():
            for level in runs["levels"]:
                answers = ", ".join(f"{code}: {n}" for code, n in level["statuses"].items())
                lines.append(
                    f"| {mode.replace('_', ' ')} (max {runs['max_batch_size']}) "
                    f"| {level['clients']} | {_f(level['requests_per_s'])} "
                    f"| {_f(level['p50_ms'], 1)} | {_f(level['p99_ms'], 1)} "
                    f"| {_f(level['mean_batch_size'], 1)} | {answers} |"
                )
        lines.append("")
    profile = r.get("profile") or {}
    if profile.get("samples"):
        lines += [
            f"py-spy, {profile['samples']:,} samples of the worker process "
            "(non-idle, all threads):",
            "",
            "| category | share |",
            "|---|---:|",
            *[f"| {row['name']} | {row['share']:.1%} |" for row in profile["categories"]],
            "",
            "Hottest functions (self time):",
            "",
            *[f"- {row['share']:.1%} `{row['name']}`" for row in profile["top_self"][:8]],
            "",
        ]
    else:
        lines += [f"No profile: {profile.get('note', 'disabled')}", ""]
    compared = r.get("variants")
    if compared:
        lines += [
            f"## Backends and precisions (model-only, {compared['comments']:,} comments, "
            f"{compared['threads']} threads, best of interleaved rounds)",
            "",
            f"Machine over the stage: {describe(compared.get('noise'))}.",
            "",
            "| variant | comments/s | vs torch fp32 | mean ROC-AUC drop | min flag agreement "
            "| max abs diff | accuracy rule |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name, v in compared["variants"].items():
            check = v.get("check") or {}
            agreement = min(check["flag_agreement"].values()) if check else None
            rule = "n/a" if not check else ("passes" if check["passed"] else "**FAILS**")
            lines.append(
                f"| {name} | {_f(v['comments_per_s'])} | {v['vs_torch_fp32']:.2f} "
                f"| {_f(check.get('auc_drop'), 5)} | {_f(agreement, 4)} "
                f"| {_f(check.get('max_abs_diff'), 4)} | {rule} |"
            )
        lines += [
            "",
            *[f"- skipped {name}: {why}" for name, why in compared["skipped"].items()],
            "",
            f"Fastest: **{compared['best']}**. Accuracy rule (training/precision_rule.py): mean "
            f"ROC-AUC drop ≤ 0.002 and flag agreement ≥ 99.5 % per label at the artifact's "
            f"thresholds, on {compared['validation_comments']:,} validation comments; max abs "
            "diff is reported, not gated.",
            "",
        ]
    lines += noise_table(r.get("noise"))
    return "\n".join(lines)


def _sizing(r: dict[str, Any]) -> list[str]:
    """How many comments each (a)/(b)/shadow run got, and why (runner.sized_messages)."""
    probe, bench = r.get("probe"), r["settings_bench"]
    if not probe or "throughput_seconds" not in bench:
        return []
    return [
        f"Each (a), (b) and shadow run timed {r['corpus']['messages']:,} comments, what (a) "
        f"scores in {bench['throughput_seconds']:.0f} s at the rate a {probe['messages']:,}-"
        f"comment probe measured ({probe['comments_per_s']:,.0f}/s), kept within "
        f"{min(bench['min_messages'], bench['messages']):,} to {bench['messages']:,}: a slow "
        "machine times fewer comments rather than taking longer.",
        "",
    ]


def _stage_noise(noise: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    return next((s for s in (noise or {}).get("stages", []) if s["stage"] == name), None)


def noise_warning(noise: dict[str, Any] | None) -> list[str]:
    """A line above the figures when any stage ran on a noisy machine."""
    if not noise or not noise.get("noisy_stages"):
        return []
    names = noise["noisy_stages"]
    return [
        f"**Noisy machine**: {len(names)} of {len(noise['stages'])} stages ran while the "
        f"hypervisor took more than {noise['noisy_steal_pct']:.0f} % of the CPU (steal): "
        + ", ".join(names)
        + ". Their figures understate what this code does on a quiet machine of this kind.",
        "",
    ]


def noise_table(noise: dict[str, Any] | None) -> list[str]:
    """Every stage: its wall time and the machine's steal, load and other processes' share."""
    if not noise:
        return []
    lines = [
        "## Machine noise per stage",
        "",
        f"Shares of all CPU time over the stage (/proc/stat): steal is what the hypervisor gave "
        f"to other guests (noisy above {noise['noisy_steal_pct']:.0f} %), other processes are "
        f"busy CPU outside the bench, its worker and broker. The speed probe times a fixed "
        f"single-threaded loop at the stage's start and end (best of 3, ms; "
        f"`testing/machine_noise.py` `speed_probe_ms`): a host can slow the machine down with "
        f"no steal showing. Total {noise['total_seconds']:.0f} s.",
        "",
        "| stage | seconds | steal % | load (1 min) start → end | busy % | other processes % "
        "| speed probe ms start → end | noisy |",
        "|---|---:|---:|---|---:|---:|---|---|",
    ]
    for s in noise["stages"]:
        lines.append(
            f"| {s['stage']} | {s['seconds']:.1f} | {_f(s['steal_pct'], 1)} "
            f"| {_f(s['load1_start'], 2)} → {_f(s['load1_end'], 2)} | {_f(s['busy_pct'], 0)} "
            f"| {_f(s['others_pct'], 0)} "
            f"| {_f(s.get('probe_ms_start'), 1)} → {_f(s.get('probe_ms_end'), 1)} "
            f"| {'**noisy**' if is_noisy(s) else 'no'} |"
        )
    lines.append("")
    return lines


def _shadow_row(shadow: dict[str, Any] | None) -> list[str]:
    if not shadow:
        return []
    return [
        f"| (b) with a shadow model attached (`{shadow['shadow_model']}`, same batches) "
        f"| {_f(shadow['with_comments_per_s'])} | {describe(shadow['run'].get('noise'))} |"
    ]


def _shadow_paragraph(shadow: dict[str, Any] | None) -> list[str]:
    if not shadow:
        return []
    covered = shadow["shadow"]
    return [
        f"Shadow scoring (`MODERATION_SHADOW_MODEL`): the primary's end-to-end rate is "
        f"**{_f(shadow['with_comments_per_s'])}** comments/s with the shadow attached vs "
        f"{_f(shadow['without_comments_per_s'])} without (best runs; with-shadow runs "
        f"{shadow['runs']}): a cost of **{shadow['throughput_cost']:.0%}**. Once the "
        "primary was done and the shadow had finished its queue, it had scored "
        f"{covered['scored']:,} comments "
        f"({covered['coverage']:.0%}), skipped {covered['dropped']:,} (behind: its queue was "
        f"full) and failed on {covered['failures']:,}. A shadow that cannot keep up skips "
        "batches rather than slowing the primary, so read the cost together with the coverage.",
        "",
    ]


def _language_row(language: dict[str, Any] | None) -> list[str]:
    if not language:
        return []
    flipped = language["flipped_to"]
    rate, noise = language[f"{flipped}_comments_per_s"], language["run"].get("noise")
    return [
        f"| (b) with language detection {flipped} (`MODERATION_LANGUAGE_DETECTION`) "
        f"| {_f(rate)} | {describe(noise)} |"
    ]


def _language_paragraph(language: dict[str, Any] | None) -> list[str]:
    if not language:
        return []
    return [
        "Language identification (fastText lid.176 on the tokenizer thread, "
        "`MODERATION_LANGUAGE_DETECTION`): end to end "
        f"**{_f(language['on_comments_per_s'])}** comments/s with it on vs "
        f"{_f(language['off_comments_per_s'])} off (best runs, alternating with (b); runs with "
        f"it {language['flipped_to']}: {language['flipped_runs']}): a cost of "
        f"**{language['throughput_cost']:.1%}** (goal ≤ 5 %).",
        "",
    ]


def _torch_row(baseline: dict[str, Any] | None, figure: str) -> list[str]:
    """(a) or (b) with the torch backend, right below the served backend's row."""
    if not baseline or baseline.get("skipped"):
        return []
    what = "model-only" if figure == "a" else "end to end"
    return [
        f"| ({figure}) {what}, torch ({baseline['precision']}; one run, in the last repeat) "
        f"| {_f(baseline[f'{figure}_comments_per_s'])} "
        f"| {describe(baseline['noise'][figure])} |"
    ]


def _torch_paragraph(baseline: dict[str, Any] | None) -> list[str]:
    if not baseline:
        return []
    if baseline.get("skipped"):
        return [f"Torch baseline: skipped, {baseline['skipped']}.", ""]
    ratio = baseline["over_torch"]
    return [
        f"Against torch ({baseline['precision']}, `MODERATION_BACKEND=torch`, one (a) and one "
        f"(b) run in the last repeat): the served backend ({baseline['served']}) scores "
        f"**{ratio['a']:.2f}x** torch's comments/s model-only (a) and **{ratio['b']:.2f}x** "
        "end to end (b) (its best runs over torch's one).",
        "",
    ]


def write_markdown(results: dict[str, Any], path: Path) -> None:
    path.write_text(markdown(results))
