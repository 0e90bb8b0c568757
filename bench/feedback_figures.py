"""The feedback loop's figures (issue 23, "Done when"), rerunnable:
`python -m bench.feedback_figures [--model DIR] [--data FILE] [--work DIR]`.

Half of the recipe's validation split (80/20, random_state 42, as `training.recipe` defines it)
plays another community's moderator decisions, the other half judges. `moderation-train
calibrate` re-fits the model on the first half; the worst per-label ECE and the ROC-AUC of the
served probabilities are measured on the second half before and after. `moderation-train
thresholds` chooses thresholds for precision targets on the first half; the precision reached on
the second half is checked against the interval it stated. Then the same after shifting the
community's base rates: toxic rows of both halves subsampled to 10 %.

The bundled default model was trained on all rows, the validation split included, so its scores
there are in-sample (ROC-AUC ~0.99 instead of ~0.97): the calibration it needs is the one of its
in-sample scores, which both halves share alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import expected_calibration_error
from training.cli import main as train_main
from training.data import TextDataset, load_dataset, split_dataset
from training.recipe import SPLIT_SEED

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "worker" / "default_model"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jigsaw" / "train.csv.gz"
TARGETS = {"toxic": 0.9, "obscene": 0.85, "insult": 0.75}
ECE_GOAL = 0.02
MIN_PER_CLASS = 10  # threat has 15 positives in a half (0.7 %); calibrate's default asks 30


def write_jigsaw(path: Path, data: TextDataset) -> Path:
    """`data` as a Jigsaw-format CSV."""
    import csv

    assert data.labels is not None
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "comment_text", *data.label_names])
        for i, text in enumerate(data.texts):
            writer.writerow([data.ids[i], text, *(str(int(v)) for v in data.labels[i])])
    return path


def shift_toxic(data: TextDataset, rate: float, seed: int) -> TextDataset:
    """All non-toxic rows and as many toxic rows (drawn at random) as make `rate` toxic."""
    assert data.labels is not None
    toxic = np.flatnonzero(data.labels[:, 0] >= 0.5)
    clean = np.flatnonzero(data.labels[:, 0] < 0.5)
    keep = round(len(clean) * rate / (1 - rate))
    chosen = np.random.default_rng(seed).choice(toxic, size=min(keep, len(toxic)), replace=False)
    return data.subset(np.sort(np.concatenate([clean, chosen])))


def probabilities(model: Path, data: TextDataset) -> np.ndarray:
    from training.modeling import load_classifier, load_tokenizer, predict

    return predict(load_classifier(model), load_tokenizer(model), data.texts)[0]


def measure(model: Path, judge: TextDataset) -> dict[str, dict[str, float]]:
    """Per label on the judging half: ECE (15 equal-mass bins) and ROC-AUC."""
    from sklearn.metrics import roc_auc_score

    assert judge.labels is not None
    p = probabilities(model, judge)
    out = {}
    for j, label in enumerate(judge.label_names):
        y = judge.labels[:, j] >= 0.5
        out[label] = {
            "ece": round(expected_calibration_error(y, p[:, j]), 4),
            "roc_auc": round(float(roc_auc_score(y, p[:, j])), 4),
            "rate": round(float(y.mean()), 4),
            "mean_score": round(float(p[:, j].mean()), 4),
        }
    return out


def run(
    name: str, model: Path, community: TextDataset, judge: TextDataset, work: Path
) -> dict[str, Any]:
    """calibrate and thresholds on `community`, measured on `judge`."""
    work.mkdir(parents=True, exist_ok=True)
    decisions = write_jigsaw(work / "community.csv", community)
    calibrated = work / "calibrated"
    assert community.labels is not None
    positives = (community.labels >= 0.5).sum(axis=0)
    refit = [
        label
        for label, n in zip(community.label_names, positives, strict=True)
        if MIN_PER_CLASS <= n <= len(community) - MIN_PER_CLASS
    ]  # a label with fewer positives keeps its calibration
    code = train_main(
        ["calibrate", "--model", str(model), "--feedback", str(decisions), "--output",
         str(calibrated), "--force", "--min-per-class", str(MIN_PER_CLASS), "--labels",
         ",".join(refit)]
    )  # fmt: skip
    if code:
        raise SystemExit(f"{name}: calibrate exited {code}")
    before, after = measure(model, judge), measure(calibrated, judge)
    policy = work / "policy.yaml"
    targets = [a for label, p in TARGETS.items() for a in ("--target-precision", f"{label}={p}")]
    report = work / "thresholds.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = train_main(
            ["thresholds", "--model", str(calibrated), "--feedback", str(decisions), *targets,
             "--policy-out", str(policy)]
        )  # fmt: skip
    if code:
        raise SystemExit(f"{name}: thresholds exited {code}")
    chosen = json.loads(buffer.getvalue().strip().splitlines()[-1])
    report.write_text(json.dumps(chosen, indent=2) + "\n")
    assert judge.labels is not None
    judged = probabilities(calibrated, judge)
    thresholds = {}
    for label, choice in chosen["labels"].items():
        j = judge.label_names.index(label)
        flagged = judged[:, j] >= choice["threshold"]
        y = judge.labels[:, j] >= 0.5
        precision = float(y[flagged].mean()) if flagged.any() else float("nan")
        recall = float(flagged[y].mean())
        low, high = choice["precision_range_new_rows"]
        thresholds[label] = {
            "target": TARGETS[label],
            "threshold": choice["threshold"],
            "stated_precision": choice["precision"],
            "stated_interval": choice["precision_interval"],
            "stated_range_new_rows": [low, high],
            "judge_precision": round(precision, 4),
            "inside_interval": bool(low <= precision <= high),
            "meets_target": bool(precision >= TARGETS[label]),
            "stated_recall": choice["recall"],
            "stated_recall_interval": choice["recall_interval"],
            "judge_recall": round(recall, 4),
        }
    worst_before = max(v["ece"] for v in before.values())
    worst_after = max(v["ece"] for v in after.values())
    return {
        "scenario": name,
        "community_rows": len(community),
        "judge_rows": len(judge),
        "refitted_labels": refit,
        "worst_ece_before": worst_before,
        "worst_ece_after": worst_after,
        "ece_goal_met": worst_after <= ECE_GOAL,
        "max_roc_auc_change": round(
            max(abs(after[k]["roc_auc"] - before[k]["roc_auc"]) for k in before), 4
        ),
        "before": before,
        "after": after,
        "thresholds": thresholds,
        "policy_version": chosen["policy_version"],
    }


def coverage(model: Path, val: TextDataset, splits: int) -> dict[str, dict[str, int]]:
    """Over `splits` random halvings of the validation split: how often the precision reached
    on the judging half lies in the range `thresholds` states for new rows, and meets the
    target. Calibration per split as `calibrate` does it (Platt on the raw logits of the
    community half, no prior shift), in numpy: 20 runs of the command would take minutes."""
    from schemas.artifact import read_contract
    from training.calibration import fit_platt, raw_logits, sigmoid
    from training.feedback_thresholds import Target, choose_threshold
    from training.modeling import load_classifier, load_tokenizer, predict

    assert val.labels is not None
    contract = read_contract(model)
    logits = predict(load_classifier(model), load_tokenizer(model), val.texts, logits=True)[0]
    raw = raw_logits(logits, list(contract.labels), contract.calibration)
    out: dict[str, dict[str, int]] = {}
    for label, target in TARGETS.items():
        j, k = val.label_names.index(label), list(contract.labels).index(label)
        y = (val.labels[:, j] >= 0.5).astype(int)
        tally = {"splits": splits, "inside": 0, "above": 0, "below": 0, "meets_target": 0}
        for seed in range(splits):
            order = np.random.default_rng(seed).permutation(len(y))
            a, b = order[: len(y) // 2], order[len(y) // 2 :]
            platt = fit_platt(raw[a, k], y[a])
            assert platt is not None
            p = sigmoid(platt.logits(raw[:, k]))
            choice = choose_threshold(p[a], y[a], Target(label, "precision", target), seed=seed)
            reached = float(y[b][p[b] >= choice.threshold].mean())
            low, high = choice.precision_range
            tally["inside"] += int(low <= reached <= high)
            tally["above"] += int(reached > high)
            tally["below"] += int(reached < low)
            tally["meets_target"] += int(reached >= target)
        out[label] = tally
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.feedback_figures", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/feedback-figures"))
    parser.add_argument("--seed", type=int, default=0, help="the halves' and subsample's seed")
    parser.add_argument("--splits", type=int, default=20, help="halvings for the coverage")
    args = parser.parse_args(argv)
    _, val = split_dataset(load_dataset(args.data), random_state=SPLIT_SEED)
    order = np.random.default_rng(args.seed).permutation(len(val))
    community, judge = val.subset(order[: len(val) // 2]), val.subset(order[len(val) // 2 :])
    results = [
        run("validation halves", args.model, community, judge, args.work / "as-is"),
        run(
            "toxic subsampled to 10 %",
            args.model,
            shift_toxic(community, 0.10, args.seed),
            shift_toxic(judge, 0.10, args.seed + 1),
            args.work / "shifted",
        ),
    ]
    covered = coverage(args.model, val, args.splits)
    (args.work / "figures.json").write_text(
        json.dumps({"scenarios": results, "threshold_coverage": covered}, indent=2) + "\n"
    )
    for r in results:
        print(
            f"{r['scenario']}: {r['community_rows']} decisions, {r['judge_rows']} judging rows; "
            f"worst ECE {r['worst_ece_before']:.4f} -> {r['worst_ece_after']:.4f} (goal <= "
            f"{ECE_GOAL}: {'met' if r['ece_goal_met'] else 'NOT met'}), largest ROC-AUC change "
            f"{r['max_roc_auc_change']:.4f}"
        )
        for label, e in r["before"].items():
            a = r["after"][label]
            print(
                f"  {label:13s} rate {e['rate']:.3f} mean score {e['mean_score']:.3f} -> "
                f"{a['mean_score']:.3f}  ECE {e['ece']:.4f} -> {a['ece']:.4f}  ROC-AUC "
                f"{e['roc_auc']:.4f} -> {a['roc_auc']:.4f}"
            )
        for label, t in r["thresholds"].items():
            print(
                f"  {label} precision >= {t['target']}: threshold {t['threshold']:.4f}, stated "
                f"{t['stated_precision']:.3f} {t['stated_interval']} (new rows "
                f"{t['stated_range_new_rows']}), on the judging half "
                f"{t['judge_precision']:.3f} "
                f"({'inside' if t['inside_interval'] else 'OUTSIDE'} the new-rows range; "
                f"recall {t['judge_recall']:.3f}, stated {t['stated_recall']:.3f})"
            )
    for label, tally in covered.items():
        print(
            f"{label} precision >= {TARGETS[label]} over {tally['splits']} halvings: reached on "
            f"the judging half inside the stated new-rows range {tally['inside']}, above "
            f"{tally['above']}, below {tally['below']}; target met {tally['meets_target']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
