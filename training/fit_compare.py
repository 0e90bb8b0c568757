"""The candidate of `fit --init-from` against the model it started from, on the same held-out
feedback rows: per label ROC-AUC, BCE, ECE and F1 (each at its own model's thresholds), judged
rows only. Written to `eval/candidate_vs_current.json` and `.md` in the run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from schemas.artifact import read_contract
from training.data import TextDataset
from training.evaluate import compute_metrics, format_metric
from training.run import RunOptions

log = logging.getLogger(__name__)

KEYS = ("roc_auc", "bce", "ece", "f1")


def _metrics(model_dir: Path, rows: TextDataset, run: RunOptions) -> dict[str, Any]:
    from training.modeling import load_classifier, load_tokenizer, predict

    assert rows.labels is not None
    contract = read_contract(model_dir)
    probs, _ = predict(
        load_classifier(model_dir), load_tokenizer(model_dir), rows.texts,
        max_length=run.max_length, batch_size=run.eval_batch_size,
    )  # fmt: skip
    order = [list(contract.labels).index(label) for label in rows.label_names]
    return compute_metrics(
        rows.labels, probs[:, order], rows.label_names, contract.label_thresholds
    )


def compare_with_current(current: Path, run: RunOptions, held_out: TextDataset) -> dict[str, Any]:
    """Both models' metrics on `held_out` and the candidate's change; also written to the run's
    `eval/` directory."""
    before = _metrics(current, held_out, run)
    after = _metrics(run.model_dir, held_out, run)
    labels: dict[str, dict[str, Any]] = {}
    for label in held_out.label_names:
        b, a = before["labels"][label], after["labels"][label]
        labels[label] = {"judged": b.get("judged", before["n"]), "positives": b["positives"]}
        for key in KEYS:
            labels[label][f"{key}_current"] = b[key]
            labels[label][f"{key}_candidate"] = a[key]
    out = {
        "rows": len(held_out),
        "current": f"{read_contract(current).model_name} {read_contract(current).model_version}",
        "mean_roc_auc_current": before["mean_roc_auc"],
        "mean_roc_auc_candidate": after["mean_roc_auc"],
        "bce_current": before["bce"],
        "bce_candidate": after["bce"],
        "labels": labels,
    }
    directory = run.output_dir / "eval"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "candidate_vs_current.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"# Candidate vs current ({out['current']}) on {len(held_out)} held-out feedback rows",
        "",
        f"mean ROC-AUC {format_metric(out['mean_roc_auc_current'])} -> "
        f"{format_metric(out['mean_roc_auc_candidate'])}; BCE {format_metric(out['bce_current'])}"
        f" -> {format_metric(out['bce_candidate'])}",
        "",
        "| label | judged | positives | ROC-AUC | BCE | ECE | F1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in labels.items():
        cells = " | ".join(
            f"{format_metric(row[f'{k}_current'])} -> {format_metric(row[f'{k}_candidate'])}"
            for k in KEYS
        )
        lines.append(f"| {label} | {row['judged']} | {row['positives']} | {cells} |")
    (directory / "candidate_vs_current.md").write_text("\n".join(lines) + "\n")
    log.info(
        "candidate vs current on %d held-out rows: mean ROC-AUC %s -> %s, BCE %s -> %s",
        len(held_out), format_metric(out["mean_roc_auc_current"]),
        format_metric(out["mean_roc_auc_candidate"]), format_metric(out["bce_current"]),
        format_metric(out["bce_candidate"]),
    )  # fmt: skip
    return out
