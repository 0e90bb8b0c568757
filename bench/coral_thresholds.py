"""Precision and recall of Coral Talk's toxicity check against this worker, at Coral's default
threshold (0.8) and at the model's own thresholds (`moderation-worker info --json`).

Each row of the Jigsaw validation split (`training.data.split_dataset`, the 80/20 split with
`--split-seed`, 42 as `make default-model`) goes through Coral's exact `comments:analyze` request
(`comment.text`, `doNotStore`, `requestedAttributes: {MODEL: {}}`, `languages: ["en"]` for an
en-US tenant) as the HTTP API handles it: the same request checks (`parse_request`), language
verdict and response (`build_response`), scored by the same tokenizer and model as the API's
batches (`ServedModel.score`: the tokenizer's `encode` then `infer`). Coral reads
`attributeScores[MODEL].summaryScore.value` and flags when it is strictly greater than its
threshold (coralproject/talk `toxic.ts`: `score > threshold`); so does this table. A row the API
refuses (too long) gets no score in Coral: counted as not flagged.

The bundled model was trained on ALL rows of train.csv.gz (its card: the refit that ships), so
these rows are in-sample for it: its figures here are optimistic. Pass `--model` an artifact of
`make default-model`'s 80/20 build (trained without these rows) for a held-out figure.

    python -m bench.coral_thresholds [--model DIR] [--data CSV] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from schemas import UnsupportedLanguage
from training.data import load_dataset, split_dataset
from worker.backends.model import load_served_model
from worker.http.perspective import ApiError, build_response, judge_language, parse_request

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "jigsaw" / "train.csv.gz"
CORAL_DEFAULT = 0.8  # TOXICITY_THRESHOLD_DEFAULT / 100 in coralproject/talk
OTHERS = (0.1, 0.3, 0.5, 0.7, 0.9)
MAX_TEXT_BYTES = 20_000  # the API's default MODERATION_HTTP_API_MAX_TEXT_BYTES


def coral_body(text: str, model: str) -> dict[str, Any]:
    """Coral's `formatBody` for `comments:analyze` (an en-US tenant, doNotStore by default)."""
    return {
        "comment": {"text": text},
        "doNotStore": True,
        "requestedAttributes": {model: {}},
        "languages": ["en"],
    }


def coral_scores(served: Any, texts: list[str], attribute: str, batch: int = 256) -> np.ndarray:
    """What Coral reads for each text (NaN where the API refuses the request)."""
    contract = served.contract
    out = np.full(len(texts), np.nan)
    for start in range(0, len(texts), batch):
        analyses, rows = [], []
        for i in range(start, min(start + batch, len(texts))):
            try:
                analysis = parse_request(coral_body(texts[i], attribute), contract, MAX_TEXT_BYTES)
            except ApiError:
                continue
            analyses.append((i, analysis))
        if not analyses:
            continue
        rows = served.score([analysis.text for _, analysis in analyses])
        for (i, analysis), row in zip(analyses, rows, strict=True):
            verdict = judge_language(
                analysis.languages, None, contract.served_languages, UnsupportedLanguage.REFUSE
            )
            response = build_response(analysis, contract.labels, row, None, verdict)
            out[i] = response["attributeScores"][attribute]["summaryScore"]["value"]
    return out


def table(
    scores: np.ndarray, truth: np.ndarray, thresholds: list[float], base_rate: float | None
) -> list[dict[str, Any]]:
    """Per threshold: counts, precision and recall on these rows, and the precision these
    rows' rates imply at `base_rate` (the label's share in the full Jigsaw set, about a third
    of its share here: each positive weighs base_rate/share, each negative (1-base_rate)/(1-
    share))."""
    share = float(truth.mean())
    wp = base_rate / share if base_rate and share else 1.0
    wn = (1 - base_rate) / (1 - share) if base_rate and share < 1 else 1.0
    rows = []
    for threshold in thresholds:
        flagged = np.nan_to_num(scores, nan=-1.0) > threshold
        tp = int(np.sum(flagged & truth))
        fp = int(np.sum(flagged & ~truth))
        fn = int(np.sum(~flagged & truth))
        rows.append(
            {
                "threshold": round(threshold, 3),
                "flagged": tp + fp,
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": round(tp / (tp + fp), 3) if tp + fp else None,
                "recall": round(tp / (tp + fn), 3) if tp + fn else None,
                "precision_at_base_rate": round(tp * wp / (tp * wp + fp * wn), 3)
                if tp + fp
                else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="artifact directory (default: bundled)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--attributes", default="all", help="comma-separated, or all")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"coral_thresholds: no data file {args.data}", file=sys.stderr)
        return 2
    served = load_served_model(args.model)
    contract = served.contract
    _, val = split_dataset(load_dataset(args.data), random_state=args.split_seed)
    texts = list(val.texts)
    labels = list(val.label_names)
    names = (
        args.attributes.split(",") if args.attributes != "all" else list(contract.api_attributes)
    )
    report: dict[str, Any] = {
        "model": f"{contract.model_name} {contract.model_version}",
        "runtime": served.runtime.describe(),
        "cpu": served.runtime.cpu.model or platform.machine(),
        "rows": len(texts),
        "split": f"20% of {args.data.name}, random_state={args.split_seed}",
        "rule": "flagged when summaryScore.value > threshold (Coral's rule)",
        "attributes": {},
    }
    started = time.perf_counter()
    for name in names:
        label = contract.api_attributes[name]
        truth = np.asarray(val.labels)[:, labels.index(label)].astype(bool)
        scores = coral_scores(served, texts, name)
        own = float(contract.label_thresholds[label])
        thresholds = sorted({CORAL_DEFAULT, round(own, 3), *OTHERS})
        report["attributes"][name] = {
            "label": label,
            "positives": int(truth.sum()),
            "refused": int(np.isnan(scores).sum()),
            "model_threshold": round(own, 3),
            "base_rate": (contract.label_base_rates or {}).get(label),
            "table": table(scores, truth, thresholds, (contract.label_base_rates or {}).get(label)),
        }
        print(f"\n{name} ({label}): {int(truth.sum())} positive of {len(texts)} rows")
        print(
            "| threshold | flagged | TP | FP | FN | precision | recall | precision at base rate |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in report["attributes"][name]["table"]:
            mark = " (Coral)" if row["threshold"] == CORAL_DEFAULT else ""
            mark = " (model)" if row["threshold"] == round(own, 3) else mark
            print(
                f"| {row['threshold']}{mark} | {row['flagged']} | {row['tp']} | {row['fp']} | "
                f"{row['fn']} | {row['precision']} | {row['recall']} | "
                f"{row['precision_at_base_rate']} |"
            )
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
