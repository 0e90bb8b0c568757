"""`make feedback-demo`: the moderation loop of docs/feedback.md end to end, on a real broker.

1. A broker (tansu, or `KAFKA_BOOTSTRAP_SERVERS`) and its topics; the worker (`moderation-worker
   run`, the bundled model, the HTTP API, a threshold policy file) until /readyz answers.
2. Rows of the recipe's validation split (80/20 of train.csv.gz, `training.data.split_dataset`)
   are produced to the input topic as one community's comments and scored. Simulated moderators
   send the true `toxic` label of half of them (the "community decisions") to
   `comments:suggestscore` in Coral Talk's exact request shape; the other half judges.
3. `moderation-train feedback-export` reads the decisions back from the feedback topic,
   `calibrate` writes a recalibrated artifact (ECE before/after), `thresholds` writes the policy
   file the worker watches; the demo waits for the worker's reload and scores the judging half
   again: the new outputs carry the new `policy_version`.
4. `moderation-train fit --init-from` fine-tunes a candidate on the decisions (1 epoch); the
   worker is restarted with it as `MODERATION_SHADOW_MODEL`, and the shadow metrics count the
   judging half.

Every step prints a short summary; any failure is one line and exit status 1. The commands run
as subprocesses, as a user would type them; their logs are kept in the work directory.

    python scripts/feedback_demo.py [--rows N] [--quick] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testing.broker import kafka_broker  # noqa: E402
from testing.coral import CORAL_COMMUNITY, coral_request  # noqa: E402
from testing.http import http_post, metric_sample, metric_sum  # noqa: E402
from testing.kafka import comment, consume_until, create_topics, produce  # noqa: E402
from testing.ports import free_port  # noqa: E402
from testing.topics import Topics  # noqa: E402
from testing.wait import wait_until  # noqa: E402
from testing.worker_process import WorkerProcess, start_worker  # noqa: E402
from training.data import TextDataset, load_dataset, split_dataset  # noqa: E402
from training.recipe import SPLIT_SEED  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "jigsaw" / "train.csv.gz"
MODEL = Path("worker", "default_model")  # relative to REPO, where the commands run
LABEL = "toxic"  # what a Coral moderator's approve/reject judges (TOXICITY)
FIRST_POLICY = "demo-1"
SCORE_TIMEOUT_S = 180


class StepFailed(RuntimeError):
    """A step of the demo failed; the message is the one line printed."""


def say(line: str = "") -> None:
    print(line, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


# ------------------------------------------------------------------------------ the commands


def train(work: Path, command: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """`moderation-train COMMAND ARGS` as a subprocess; its log goes to work/COMMAND.log. The
    JSON its last stdout line holds; StepFailed with its last error line otherwise."""
    # `python -m training` is `moderation-train`'s entry point (training.cli.main); run from the
    # checkout, as the worker is (`python -m worker run`), both run this tree's code even where
    # the installed console script points at another checkout
    argv = [sys.executable, "-m", "training", command, *args]
    say("$ moderation-train " + " ".join(shlex.quote(a) for a in [command, *args]))
    log = work / f"{command}.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as err:
        try:
            done = subprocess.run(
                argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"moderation-train {command} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        last = lines[-1] if lines else "(no output)"
        raise StepFailed(f"moderation-train {command} exited {done.returncode}: {last}")
    lines = done.stdout.decode().strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        raise StepFailed(f"moderation-train {command}: no JSON summary: {lines[-1]}") from None


# ------------------------------------------------------------------------------- the data


def validation_rows(rows: int) -> TextDataset:
    """The first `rows` rows of the recipe's validation split (80/20, random_state 42)."""
    _, val = split_dataset(load_dataset(DATA), random_state=SPLIT_SEED)
    if rows > len(val):
        raise StepFailed(f"--rows {rows}: the validation split has {len(val)} rows")
    return val.subset(range(rows))


def truth(data: TextDataset, i: int) -> int:
    assert data.labels is not None
    return int(data.labels[i, data.label_names.index(LABEL)] >= 0.5)


# ------------------------------------------------------------------------------- Kafka


def score(worker: WorkerProcess, bootstrap: str, topics: Topics, messages: list[Any]) -> dict:
    """Produce `messages` (comment records) and wait until the output topic holds a score for
    each; id -> the output message."""
    ids = {orjson.loads(value)["id"] for _, value in messages}
    asyncio.run(produce(bootstrap, topics.input, messages))
    outputs: dict[str, Any] = {}

    def take(_: str, record: ConsumerRecord) -> None:
        message = orjson.loads(record.value)
        if message["id"] in ids:
            outputs[message["id"]] = message

    async def read() -> None:
        # the output topic from the start: earlier rounds' scores too, until this round's are in
        consumer = AIOKafkaConsumer(
            topics.output, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        try:
            await consume_until(consumer, take, lambda: len(outputs) == len(ids), SCORE_TIMEOUT_S)
        finally:
            await consumer.stop()

    asyncio.run(read())
    if len(outputs) != len(ids):
        alive = "" if worker.alive() else " (the worker exited)"
        raise StepFailed(f"{len(outputs)} of {len(ids)} comments scored{alive}")
    return outputs


def precision_recall(outputs: dict, data: TextDataset, ids: dict[str, int]) -> tuple:
    """Precision and recall of the outputs' `toxic` flag against the rows' labels."""
    flagged = [i for key, i in ids.items() if LABEL in outputs[key]["flagged"]]
    hits = sum(truth(data, i) for i in flagged)
    positives = sum(truth(data, i) for i in ids.values())
    precision = hits / len(flagged) if flagged else float("nan")
    return precision, hits / positives if positives else float("nan"), len(flagged)


# ------------------------------------------------------------------------------- the demo


def start(
    bootstrap: str, topics: Topics, work: Path, policy: Path, name: str, shadow: Path | None
) -> WorkerProcess:
    overrides = {
        "MODERATION_MODEL": str(MODEL),
        "MODERATION_DEVICE": "cpu",
        "MODERATION_PRECISION": "fp32",
        "MODERATION_HTTP_API_PORT": str(free_port()),
        "MODERATION_POLICY_FILE": str(policy),
        "MODERATION_POLICY_POLL_INTERVAL_S": "0.5",
        "MODERATION_FEEDBACK_TOPIC": f"{topics.output}-feedback",
        "MODERATION_COMMIT_INTERVAL_MS": "200",
    }
    if shadow is not None:
        overrides["MODERATION_SHADOW_MODEL"] = str(shadow)
    try:
        worker = start_worker(bootstrap, topics, log_path=work / f"{name}.log", overrides=overrides)
    except (RuntimeError, TimeoutError) as exc:
        lines = [x for x in str(exc).splitlines() if x.strip()]
        why = lines[0] + (f": {lines[-1]}" if len(lines) > 1 else "")
        raise StepFailed(f"the worker ({name}) did not become ready: {why}") from None
    say(f"worker ({name}) ready: metrics {worker.url}, API {worker.api_url}")
    return worker


def moderate(worker: WorkerProcess, data: TextDataset, ids: dict[str, int]) -> int:
    """Simulated moderators: Coral's suggestscore request per comment, rejected (1) where the
    row is toxic, approved (0) where not. The number stored (200)."""
    for key, i in ids.items():
        status = "REJECTED" if truth(data, i) else "APPROVED"
        body = orjson.dumps(coral_request(data.texts[i], key, status))
        url = f"{worker.api_url}/v1alpha1/comments:suggestscore"
        answer = http_post(url, body)
        if answer.status != 200:
            raise StepFailed(f"suggestscore for {key} answered {answer.status}: {answer.body}")
        if json.loads(answer.body).get("clientToken") != f"comment:{key}":
            raise StepFailed(f"suggestscore for {key}: unexpected answer {answer.body}")
    stored = metric_sample(
        worker.get("/metrics").body, "moderation_feedback_suggestions_total", outcome="stored"
    )
    return int(stored)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The demo; returns the summary's facts."""
    config = json.loads((REPO / MODEL / "config.json").read_text())
    facts: dict[str, Any] = {"model_threshold": config["label_thresholds"][LABEL]}
    quick = args.quick
    rows = args.rows or (160 if quick else 600)
    min_per_class = "8" if quick else "30"
    target = args.target_precision or (0.8 if quick else 0.9)
    step(f"data: {rows} rows of the validation split of {DATA.name} (80/20, random_state 42)")
    data = validation_rows(rows)
    community = {f"v{i}": i for i in range(0, rows, 2)}  # decisions come back for these
    judging = {f"v{i}": i for i in range(1, rows, 2)}  # held out: judge the new policy with
    positives = sum(truth(data, i) for i in community.values())
    say(f"{len(community)} community decisions ({positives} toxic), {len(judging)} to judge")

    policy = work / "policy.yaml"
    policy.write_text(
        f"version: {FIRST_POLICY}\ndescription: before feedback (the model's thresholds)\n"
    )
    with kafka_broker(work / "broker.log") as bootstrap:
        step(f"broker {bootstrap}, worker (model {MODEL}, policy {policy.name})")
        topics = Topics.fresh("feedback-demo")
        feedback_topic = f"{topics.output}-feedback"
        asyncio.run(
            create_topics(
                bootstrap,
                {topics.input: 1, topics.output: 1, topics.dlq: 1, feedback_topic: 1}
                | {f"{topics.output}-shadow": 1},
            )
        )
        worker = start(bootstrap, topics, work, policy, "worker", None)
        try:
            facts |= first_round(worker, bootstrap, topics, data, community, judging)
            facts |= offline_loop(
                worker, bootstrap, topics, work, policy, data, judging, min_per_class, target
            )
        finally:
            code = worker.stop()
        if code != 0:
            raise StepFailed(f"the worker exited {code} on SIGTERM (worker.log)")
        facts |= shadow_round(bootstrap, topics, work, policy, data, judging)
    return facts


def first_round(
    worker: WorkerProcess,
    bootstrap: str,
    topics: Topics,
    data: TextDataset,
    community: dict[str, int],
    judging: dict[str, int],
) -> dict[str, Any]:
    step("comments scored, moderators decide (comments:suggestscore, Coral's request)")
    ids = community | judging
    metadata = {"tenant": CORAL_COMMUNITY}
    # upstream's comment ids are Coral's clientTokens (`comment:<id>`), so the worker's score
    # cache finds what it published when the decision comes back (live quality, below)
    messages = [
        comment(f"comment:{key}", data.texts[i], metadata=metadata) for key, i in ids.items()
    ]
    started = time.monotonic()
    scored = score(worker, bootstrap, topics, messages)
    outputs = {key.removeprefix("comment:"): output for key, output in scored.items()}
    versions = sorted({m["policy_version"] for m in outputs.values()})
    say(f"{len(outputs)} comments scored in {time.monotonic() - started:.1f} s, policy {versions}")
    started = time.monotonic()
    stored = moderate(worker, data, community)
    say(
        f"{stored} decisions stored on the feedback topic "
        f"({time.monotonic() - started:.1f} s; tenant {CORAL_COMMUNITY!r})"
    )
    if stored != len(community):
        raise StepFailed(f"{stored} of {len(community)} decisions stored")
    live = live_quality(worker, stored)
    community_precision, community_recall, _ = precision_recall(outputs, data, community)
    precision, recall, flagged = precision_recall(outputs, data, judging)
    say(
        f"judging half under {versions[0]}: {flagged} flagged {LABEL}, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    return {
        "scored": len(outputs),
        "decisions": stored,
        "first_policy": versions,
        "before": {"precision": precision, "recall": recall, "flagged": flagged},
        "live": live,  # the worker's count, and the same figures computed here:
        "community": {"precision": community_precision, "recall": community_recall},
    }


def live_quality(worker: WorkerProcess, stored: int) -> dict[str, float]:
    """What the running worker made of the decisions (live quality: its feedback consumer reads
    the topic back and counts them against the policy in force), once it counted them all."""
    name = "moderation_feedback_decisions_total"

    def counted() -> str | None:
        body = worker.get("/metrics").body
        done = metric_sample(body, "moderation_feedback_records_total", outcome="counted")
        return body if done >= stored else None

    body = wait_until(counted, 60, interval=0.5, message="the worker never counted the decisions")
    tp, fp, fn = (
        metric_sample(body, name, label=LABEL, flagged=f, decision=d)
        for f, d in (("true", "1"), ("true", "0"), ("false", "1"))
    )
    decided = metric_sample(body, name, label=LABEL)
    score_sum = metric_sample(body, "moderation_feedback_score_sum_total", label=LABEL)
    live = {
        "decisions": decided,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "calibration_gap": (score_sum - tp - fn) / decided if decided else float("nan"),
    }
    say(
        f"live quality (the worker's feedback consumer, {LABEL}): {decided:.0f} decisions counted, "
        f"precision {live['precision']:.3f}, recall {live['recall']:.3f}, calibration gap "
        f"{live['calibration_gap']:+.3f} (mean score - observed rate)"
    )
    return live


def offline_loop(
    worker: WorkerProcess,
    bootstrap: str,
    topics: Topics,
    work: Path,
    policy: Path,
    data: TextDataset,
    judging: dict[str, int],
    min_per_class: str,
    target: float,
) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    feedback = work / "feedback.csv"
    step("export the decisions")
    exported = train(
        work, "feedback-export", "--bootstrap-servers", bootstrap,
        "--topic", f"{topics.output}-feedback", "--tenant", CORAL_COMMUNITY,
        "--output", str(feedback),
    )  # fmt: skip
    say(f"-> {feedback.name}: {json.dumps(exported)}")
    facts["exported"] = exported

    step("recalibrate (a new artifact)")
    calibrated = work / "calibrated"
    report = train(
        work, "calibrate", "--model", str(MODEL), "--feedback", str(feedback),
        "--output", str(calibrated), "--min-per-class", min_per_class,
    )  # fmt: skip
    row = report["labels"][LABEL]
    say(
        f"-> {calibrated.name} (version {report['source_version']} -> {report['model_version']}): "
        f"{LABEL} {row['judged']} judged, rate {row['rate']:.3f}, mean score "
        f"{row['mean_score_before']:.3f} -> {row['mean_score_after']:.3f}, ECE "
        f"{row['ece_before']:.4f} -> {row['ece_after']:.4f} (cross-fitted; noise floor "
        f"{row['ece_floor']:.4f}), ROC-AUC {row['roc_auc']} (unchanged)"
    )
    facts["calibration"] = {"model_version": report["model_version"], **row}

    step("thresholds for the served model -> the policy file the worker watches")
    chosen = train(
        work, "thresholds", "--model", str(MODEL), "--feedback", str(feedback),
        "--target-precision", f"{LABEL}={target}", "--tenant", CORAL_COMMUNITY,
        "--policy-in", str(policy), "--policy-out", str(policy),
    )  # fmt: skip
    c = chosen["labels"][LABEL]
    say(
        f"-> {policy.name} version {chosen['policy_version']}: {LABEL} threshold "
        f"{c['threshold']:.3f} ({c['target']}): precision {c['precision']:.3f} "
        f"[{c['precision_interval'][0]:.3f}, {c['precision_interval'][1]:.3f}] (new rows "
        f"{c['precision_range_new_rows'][0]:.3f}-{c['precision_range_new_rows'][1]:.3f}), recall "
        f"{c['recall']:.3f} [{c['recall_interval'][0]:.3f}, {c['recall_interval'][1]:.3f}]"
    )
    facts["thresholds"] = {"policy_version": chosen["policy_version"], **c}

    step("hot reload")
    version = chosen["policy_version"]

    def reloaded() -> str | None:
        body = worker.get("/metrics").body
        in_force = metric_sample(body, "moderation_policy_info", version=version) == 1
        return body if in_force else None

    body = wait_until(
        reloaded, 60, interval=0.2, message=f"the worker did not report policy {version}"
    )
    seen = time.time() - policy.stat().st_mtime  # the file's write to the reload observed
    reloads = metric_sum(body, "moderation_policy_reloads_total")
    say(
        f'moderation_policy_info{{version="{version}"}} 1, moderation_policy_reloads_total '
        f"{reloads:.0f}: observed {seen:.1f} s after the file was written, no restart"
    )
    metadata = {"tenant": CORAL_COMMUNITY}
    again = {f"{key}-r": i for key, i in judging.items()}
    outputs = score(
        worker,
        bootstrap,
        topics,
        [comment(key, data.texts[i], metadata=metadata) for key, i in again.items()],
    )
    versions = sorted({m["policy_version"] for m in outputs.values()})
    precision, recall, flagged = precision_recall(outputs, data, again)
    say(
        f"judging half scored again: policy {versions}, {flagged} flagged {LABEL}, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    facts["reload"] = {"reloads": reloads, "policy_versions": versions}
    facts["after"] = {"precision": precision, "recall": recall, "flagged": flagged}
    return facts


def shadow_round(
    bootstrap: str,
    topics: Topics,
    work: Path,
    policy: Path,
    data: TextDataset,
    judging: dict[str, int],
) -> dict[str, Any]:
    step("fine-tune a candidate on the decisions")
    run_dir = work / "candidate"
    fitted = train(
        work, "fit", "--init-from", str(MODEL), "--data", str(work / "feedback.csv"),
        "--output-dir", str(run_dir), "--epochs", "1", "--batch-size", "16",
        "--learning-rate", "2e-5", "--no-progress",
    )  # fmt: skip
    candidate = run_dir / "model"
    version = json.loads((candidate / "config.json").read_text())["model_version"]
    compared = json.loads((run_dir / "eval" / "candidate_vs_current.json").read_text())
    say(f"-> {candidate.relative_to(work)}: {json.dumps(fitted)}")
    say(f"   candidate vs current on held-out decisions: {comparison_line(compared)}")

    step("the candidate as a shadow")
    worker = start(bootstrap, topics, work, policy, "worker-shadow", candidate)
    try:
        again = {f"{key}-s": i for key, i in judging.items()}
        metadata = {"tenant": CORAL_COMMUNITY}
        messages = [comment(key, data.texts[i], metadata=metadata) for key, i in again.items()]
        outputs = score(worker, bootstrap, topics, messages)
        wait_until(
            lambda: (
                metric_sum(worker.get("/metrics").body, "moderation_shadow_scored_total")
                >= len(again)
            ),
            60,
            interval=0.2,
            message="the shadow did not score the comments",
        )
        body = worker.get("/metrics").body
    finally:
        code = worker.stop()
    if code != 0:
        raise StepFailed(f"the worker exited {code} on SIGTERM (worker-shadow.log)")
    shadow = {
        "scored": metric_sum(body, "moderation_shadow_scored_total"),
        "dropped": metric_sum(body, "moderation_shadow_dropped_total"),
        "failures": metric_sum(body, "moderation_shadow_failures_total"),
        "flips": metric_sum(body, "moderation_shadow_flag_flips_total"),
        f"{LABEL}_flips": metric_sample(body, "moderation_shadow_flag_flips_total", label=LABEL),
        "mean_abs_diff": metric_sum(body, "moderation_shadow_score_difference_sum")
        / max(1.0, metric_sum(body, "moderation_shadow_score_difference_count")),
    }
    versions = sorted({m["policy_version"] for m in outputs.values()})
    say(
        f"{len(outputs)} comments scored (policy {versions}); shadow scored "
        f"{shadow['scored']:.0f}, dropped {shadow['dropped']:.0f}, failed batches "
        f"{shadow['failures']:.0f}; flag flips {shadow['flips']:.0f} ({LABEL}: "
        f"{shadow[f'{LABEL}_flips']:.0f}); mean |primary - shadow| {shadow['mean_abs_diff']:.4f}"
    )
    return {
        "fit": fitted,
        "candidate_version": version,
        "shadow": shadow,
        "shadow_policy_versions": versions,
    }


def comparison_line(compared: dict[str, Any]) -> str:
    """The comparison's figures for LABEL (fit's eval/candidate_vs_current.json), in a few
    words."""
    entry = compared["labels"][LABEL]
    figures = [
        f"{metric} {entry[metric + '_current']:.4f} -> {entry[metric + '_candidate']:.4f}"
        for metric in ("roc_auc", "bce", "ece", "f1")
        if entry.get(metric + "_current") is not None
    ]
    return f"{LABEL} ({entry['judged']} rows): " + ", ".join(figures)


def summary_lines(facts: dict[str, Any]) -> list[str]:
    """The demo's facts in a few readable lines."""
    cal, chosen, shadow = facts["calibration"], facts["thresholds"], facts["shadow"]
    before, after = facts["before"], facts["after"]
    low, high = chosen["precision_interval"]
    return [
        f"decisions: {facts['decisions']} stored through comments:suggestscore, "
        f"{facts['exported']['rows']} exported from the feedback topic",
        f"calibration ({LABEL}): ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, "
        f"ROC-AUC {cal['roc_auc']:.4f} unchanged; new artifact version {cal['model_version']}",
        f"policy: {facts['first_policy'][0]} -> {chosen['policy_version']}, {LABEL} threshold "
        f"{facts['model_threshold']:.3f} -> {chosen['threshold']:.3f} for {chosen['target']} "
        f"(stated {chosen['precision']:.3f} [{low:.3f}, {high:.3f}]); hot-reloaded, new outputs "
        f"carry {', '.join(facts['reload']['policy_versions'])}",
        f"judging half ({LABEL}): precision {before['precision']:.3f} -> "
        f"{after['precision']:.3f}, recall {before['recall']:.3f} -> {after['recall']:.3f}",
        f"shadow: candidate {facts['candidate_version']} scored {shadow['scored']:.0f} comments, "
        f"dropped {shadow['dropped']:.0f}, flag flips {shadow['flips']:.0f} "
        f"({LABEL}: {shadow[LABEL + '_flips']:.0f})",
    ]


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.machine()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/feedback_demo.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=None, help="validation rows (default 600)")
    parser.add_argument("--quick", action="store_true", help="160 rows, for the test")
    parser.add_argument(
        "--target-precision",
        type=float,
        default=None,
        help=f"the {LABEL} precision target for `thresholds` (default 0.9; --quick 0.8)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 40:
        parser.exit(2, "feedback-demo: --rows must be at least 40\n")
    if args.target_precision is not None and not 0 < args.target_precision < 1:
        parser.exit(2, "feedback-demo: --target-precision must lie between 0 and 1\n")
    if not DATA.is_file():
        parser.exit(2, f"feedback-demo: {DATA} not found (the Jigsaw rows)\n")
    started = time.monotonic()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="feedback-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        facts = run(args, work)
    except Exception as exc:  # any step: one line, the logs kept
        what = str(exc).strip().splitlines()
        detail = what[0] if what else type(exc).__name__
        if not isinstance(exc, StepFailed | TimeoutError):
            detail = f"{type(exc).__name__}: {detail}"
        print(f"feedback-demo: failed: {detail} (logs in {work})", file=sys.stderr)
        return 1
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    facts["wall_s"] = round(time.monotonic() - started, 1)
    facts["cpu"] = cpu_model()
    step(f"summary ({facts['wall_s']:.0f} s on {facts['cpu']})")
    for line in summary_lines(facts):
        say(line)
    say("SUMMARY " + json.dumps(facts, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
