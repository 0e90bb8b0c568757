"""`moderation-train thresholds`: per-label thresholds chosen on moderator feedback, written into a
threshold policy file the worker hot-reloads.

For a precision target P on a label, the threshold is the lowest (the most recall) at which the
lower bound of precision is at least P: the bootstrap's (over resamples of the judged rows), or
the Wilson score bound where that is lower (a few top rows, all positive); for a
recall target R, the highest (the most precision) at which the lower bound of recall is at
least R. The scores are the served model's (`--model`: the artifact the worker serves with this
policy). Expected precision and recall are reported with their bootstrap intervals. A target no
threshold meets is refused (one line, exit 2) with the best lower bound the data supports.

The policy file (`schemas.policy.ThresholdPolicy`) keeps everything of `--policy-in` but the
thresholds set here (the defaults, or one tenant's), gets a new version, and is replaced
atomically (written beside, then renamed) so that a worker polling it never reads half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from schemas.artifact import read_contract
from schemas.policy import TenantPolicy, ThresholdPolicy
from training.artifact_files import resolve_model_dir
from training.feedback_data import FeedbackError, column, require_classes
from training.provenance import portable_path

log = logging.getLogger(__name__)

Metric = Literal["precision", "recall"]
BOOTSTRAP_ROUNDS = 1000
CONFIDENCE = 0.95  # one-sided: the target is met by the 5th percentile
INTERVAL = 0.90  # the reported two-sided interval (5th to 95th percentile)
MIN_PER_CLASS = 10  # judged positives and negatives a label needs for a threshold
MAX_CUTS = 4000  # candidate thresholds at most (an even grid of ranks beyond)
BOOTSTRAP_CHUNK = 100  # resamples drawn at once (memory: this many x judged rows)
VERSION_SUFFIX = re.compile(r"^(?P<base>.*)-feedback\.(?P<n>\d+)$")


@dataclass(frozen=True)
class Target:
    """One `--target-precision LABEL=P` or `--target-recall LABEL=R`."""

    label: str
    metric: Metric
    value: float


def parse_target(metric: Metric, text: str) -> Target:
    """`LABEL=VALUE` with 0 < VALUE < 1 (`ValueError`, one line, otherwise)."""
    label, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not label.strip() or not 0.0 < number < 1.0:
        raise ValueError(
            f"--target-{metric}: expected LABEL=VALUE with 0 < VALUE < 1, got {text!r}"
        )
    return Target(label.strip(), metric, number)


@dataclass(frozen=True)
class Choice:
    """The threshold chosen for one target, with its expected precision and recall."""

    target: Target
    threshold: float
    precision: float
    precision_interval: tuple[float, float]
    recall: float
    recall_interval: tuple[float, float]
    flagged: int
    judged: int
    positives: int

    @property
    def precision_range(self) -> tuple[float, float]:
        """Where the precision measured on as many new judged rows should fall (90 %)."""
        return prediction_range(self.precision, self.precision_interval)

    @property
    def recall_range(self) -> tuple[float, float]:
        """Where the recall measured on as many new judged rows should fall (90 %)."""
        return prediction_range(self.recall, self.recall_interval)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": f"{self.target.metric} >= {self.target.value}",
            "threshold": self.threshold,
            "precision": self.precision,
            "precision_interval": list(self.precision_interval),
            "precision_range_new_rows": list(self.precision_range),
            "recall": self.recall,
            "recall_interval": list(self.recall_interval),
            "recall_range_new_rows": list(self.recall_range),
            "flagged": self.flagged,
            "judged": self.judged,
            "positives": self.positives,
        }


def prediction_range(point: float, interval: tuple[float, float]) -> tuple[float, float]:
    """The interval for a metric measured on a fresh sample as large as the feedback: the
    bootstrap interval of the estimate widened by sqrt(2) around it (the new sample's own noise
    adds as much again; normal approximation), clipped to [0, 1]. Checked on the validation
    halves over 20 splits: 92 % of the halves' precisions fell inside (stated: 90 %)."""
    low, high = interval
    widen = math.sqrt(2.0)
    return (
        round(max(0.0, point - (point - low) * widen), 4),
        round(min(1.0, point + (high - point) * widen), 4),
    )


def wilson_lower(rate: np.ndarray, trials: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Wilson score lower bound of a proportion: where the bootstrap is blind (a
    handful of rows, all positive, resample to a precision of 1 every time) it still is not."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(confidence)
    n = np.maximum(np.asarray(trials, dtype=np.float64), 1e-12)
    p = np.asarray(rate, dtype=np.float64)
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def choose_threshold(
    scores: np.ndarray,
    y: np.ndarray,
    target: Target,
    *,
    rounds: int = BOOTSTRAP_ROUNDS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Choice:
    """The threshold meeting `target` on (`scores`, `y`) with its bootstrap lower bound (see the
    module doc); `FeedbackError` when none does."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    # cut k flags the first k+1 rows; only the last row of a run of equal scores is a real cut
    cuts = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    if len(cuts) > MAX_CUTS:  # large feedback: candidate thresholds on an even grid of ranks
        cuts = cuts[np.unique(np.linspace(0, len(cuts) - 1, MAX_CUTS).round().astype(np.int64))]
    # row 0: the data itself; then the bootstrap resamples, drawn in chunks (memory: chunk x rows)
    precision = np.empty((rounds + 1, len(cuts)))
    recall = np.empty((rounds + 1, len(cuts)))
    flagged0 = positives0 = 0.0
    rng = np.random.default_rng(seed)
    done = -1  # resamples drawn so far; -1: row 0 (the data) not yet
    while done < rounds:
        if done < 0:
            weights = np.ones((1, len(s)))
        else:
            size = min(BOOTSTRAP_CHUNK, rounds - done)
            weights = rng.multinomial(len(s), np.full(len(s), 1.0 / len(s)), size=size)
            weights = weights.astype(np.float64)
        tp = np.cumsum(weights * t, axis=1)[:, cuts]
        flagged = np.cumsum(weights, axis=1)[:, cuts]
        positives = (weights * t).sum(axis=1, keepdims=True)
        at = slice(done + 1, done + 1 + len(weights))
        precision[at] = np.where(flagged > 0, tp / np.maximum(flagged, 1e-12), 0.0)
        recall[at] = np.where(positives > 0, tp / np.maximum(positives, 1e-12), 0.0)
        if done < 0:
            flagged0, positives0 = flagged[0], float(positives[0, 0])
        done += len(weights)
    metric = precision if target.metric == "precision" else recall
    trials = flagged0 if target.metric == "precision" else np.full(len(cuts), positives0)
    lower = np.minimum(
        np.quantile(metric[1:], 1.0 - confidence, axis=0),
        wilson_lower(metric[0], trials, confidence),
    )
    meets = np.flatnonzero(lower >= target.value)
    if not len(meets):
        best = int(np.argmax(lower))
        raise FeedbackError(
            f"label {target.label}: no threshold reaches {target.metric} >= {target.value} with "
            f"{confidence:.0%} confidence on {len(s)} judged rows ({int(t.sum())} positive); the "
            f"best lower bound is {lower[best]:.3f} (point {metric[0, best]:.3f}) at "
            f"{s[cuts[best]]:.4f}: lower the target or collect more decisions"
        )
    # precision: the lowest threshold (most recall); recall: the highest (most precision)
    index = int(meets[-1] if target.metric == "precision" else meets[0])
    low, high = (1.0 - INTERVAL) / 2, 1.0 - (1.0 - INTERVAL) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        a, b = np.quantile(values[1:, index], [low, high])
        return round(float(a), 4), round(float(b), 4)

    return Choice(
        target=target,
        threshold=round(float(s[cuts[index]]), 6),
        precision=round(float(precision[0, index]), 4),
        precision_interval=interval(precision),
        recall=round(float(recall[0, index]), 4),
        recall_interval=interval(recall),
        flagged=int(cuts[index] + 1),
        judged=len(s),
        positives=int(t.sum()),
    )


def _yaml_loader() -> type:
    """Safe YAML without implicit timestamps, as the worker reads policies: `version:
    2026-12-01` stays the string it reads as."""
    import yaml

    class TextLoader(yaml.SafeLoader):
        pass

    TextLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return TextLoader


def read_policy(path: Path) -> ThresholdPolicy:
    """A policy file (JSON if *.json, else YAML) validated as `ThresholdPolicy`; `FeedbackError`
    (one line: the file and the first problem's position, never its content) otherwise."""
    import yaml
    from pydantic import ValidationError

    if not path.is_file():
        raise FeedbackError(f"--policy-in {path}: no such file")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if kind == "JSON" else yaml.load(raw, Loader=_yaml_loader())
    except json.JSONDecodeError as exc:
        raise FeedbackError(
            f"--policy-in {path}: not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise FeedbackError(f"--policy-in {path}: not valid YAML{where}") from None
    except (OSError, ValueError) as exc:
        raise FeedbackError(f"--policy-in {path}: unreadable ({type(exc).__name__})") from None
    try:
        return ThresholdPolicy.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        at = ".".join(str(part) for part in error["loc"]) or "the document"
        raise FeedbackError(f"--policy-in {path} does not validate: {at}: {error['msg']}") from None


def next_version(previous: str | None) -> str:
    """`feedback.1` for a new policy; `V-feedback.N` -> `V-feedback.N+1`; else `V-feedback.1`."""
    if previous is None:
        return "feedback.1"
    match = VERSION_SUFFIX.match(previous)
    if match:
        return f"{match['base']}-feedback.{int(match['n']) + 1}"
    if previous.startswith("feedback.") and previous[9:].isdigit():
        return f"feedback.{int(previous[9:]) + 1}"
    return f"{previous}-feedback.1"


def updated_policy(
    policy: ThresholdPolicy | None,
    thresholds: dict[str, float],
    tenant: str | None,
    version: str | None,
    description: str,
    precision_targets: dict[str, float] | None = None,
) -> ThresholdPolicy:
    """`policy` (or an empty one) with `thresholds` and the precision targets they were chosen
    to meet (`precision_targets`, what the worker alerts on) set for `tenant` (None: the
    defaults), all else kept, and a new version."""
    base = policy or ThresholdPolicy(version="0")
    targets = precision_targets or {}
    tenants = dict(base.tenants)
    defaults = dict(base.thresholds)
    default_targets = dict(base.precision_targets)
    if tenant is None:
        defaults.update(thresholds)
        default_targets.update(targets)
    else:
        old = tenants.get(tenant, TenantPolicy())
        tenants[tenant] = old.model_copy(
            update={
                "thresholds": {**old.thresholds, **thresholds},
                "precision_targets": {**old.precision_targets, **targets},
            }
        )
    return base.model_copy(
        update={
            "version": version or next_version(policy.version if policy else None),
            "description": description,
            "thresholds": defaults,
            "precision_targets": default_targets,
            "tenants": tenants,
        }
    )


def write_policy(policy: ThresholdPolicy, path: Path) -> None:
    """Write `policy` (JSON if *.json, else YAML) atomically: a temporary file beside `path`,
    then renamed over it."""
    import yaml

    document = policy.model_dump(mode="json", exclude_none=True)
    text = (
        json.dumps(document, indent=2) + "\n"
        if path.suffix == ".json"
        else yaml.safe_dump(document, sort_keys=False)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def thresholds_from_feedback(
    model: Path,
    feedback: Path,
    targets: Sequence[Target],
    policy_out: Path,
    *,
    tenant: str | None = None,
    policy_in: Path | None = None,
    version: str | None = None,
    min_per_class: int = MIN_PER_CLASS,
    rounds: int = BOOTSTRAP_ROUNDS,
    max_length: int = 128,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Choose a threshold per target on the feedback scored by `model` and write the updated
    policy to `policy_out`; returns the report (per label: the threshold, expected precision
    and recall with intervals) and the policy's version."""
    from training.feedback_data import load_feedback
    from training.modeling import load_classifier, load_tokenizer, predict

    if not targets:
        raise FeedbackError(
            "give at least one --target-precision LABEL=P or --target-recall LABEL=R"
        )
    labels = [t.label for t in targets]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise FeedbackError(f"one target per label; {', '.join(duplicated)} has more than one")
    model_dir = resolve_model_dir(model)
    contract = read_contract(model_dir)
    unknown = [label for label in labels if label not in contract.labels]
    if unknown:
        raise FeedbackError(
            f"unknown label(s) {', '.join(unknown)} in the targets; the model's labels are "
            f"{', '.join(contract.labels)}"
        )
    policy = read_policy(policy_in) if policy_in is not None else None
    if policy is not None and policy.unknown_labels(contract.labels):
        raise FeedbackError(
            f"--policy-in {policy_in} names label(s) the model does not have: "
            f"{', '.join(policy.unknown_labels(contract.labels))}"
        )
    data = load_feedback(feedback, list(contract.labels))
    missing = [label for label in labels if label not in data.label_names]
    if missing:
        raise FeedbackError(f"{feedback}: no column for the target label(s) {', '.join(missing)}")
    require_classes(data, labels, min_per_class, "choose a threshold")
    probabilities, _ = predict(
        load_classifier(model_dir), load_tokenizer(model_dir), data.texts,
        max_length=max_length, batch_size=batch_size,
    )  # fmt: skip
    choices: dict[str, Choice] = {}
    for target in targets:
        rows, y = column(data, target.label)
        scores = probabilities[rows, list(contract.labels).index(target.label)]
        choices[target.label] = choose_threshold(scores, y, target, rounds=rounds)
    description = (
        f"thresholds for {', '.join(labels)} chosen on moderator feedback {feedback.name} "
        f"for {contract.model_name} {contract.model_version}"
        + (f" (tenant {tenant})" if tenant else "")
    )
    met = {label: c.target.value for label, c in choices.items() if c.target.metric == "precision"}
    updated = updated_policy(
        policy,
        {label: c.threshold for label, c in choices.items()},
        tenant,
        version,
        description,
        precision_targets=met,
    )
    write_policy(updated, policy_out)
    for label, c in choices.items():
        log.info(
            "%s: threshold %.4f: precision %.3f (90%% interval [%.3f, %.3f]; on as many new "
            "rows [%.3f, %.3f]), recall %.3f ([%.3f, %.3f]; new rows [%.3f, %.3f]) "
            "(%d of %d judged rows flagged)",
            label, c.threshold, c.precision, *c.precision_interval, *c.precision_range,
            c.recall, *c.recall_interval, *c.recall_range, c.flagged, c.judged,
        )  # fmt: skip
    return {
        "policy": portable_path(policy_out),
        "policy_version": updated.version,
        "tenant": tenant,
        "model": f"{contract.model_name} {contract.model_version}",
        "labels": {label: c.as_dict() for label, c in choices.items()},
    }
