"""Write an artifact directory: weights (safetensors), tokenizer, `config.json` carrying the
artifact contract, `training_info.json` and the model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from schemas.artifact import (
    CONFIG_FILE,
    DEFAULT_THRESHOLD,
    WEIGHTS_FILE,
    ArtifactContract,
    Calibration,
    CollapseRecord,
    weights_version,
)
from training.artifact_files import CARD_FILE, INFO_FILE
from training.model_card import model_card
from training.modeling import HEAD_FILE, MeanPooledClassifier

log = logging.getLogger(__name__)


def save_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    *,
    thresholds: dict[str, float],
    info: dict[str, Any],
    model_name: str | None = None,
    model_version: str | None = None,
    fp16: bool = False,
    calibration: Calibration | None = None,
    base_rates: dict[str, float] | None = None,
    training_rates: dict[str, float] | None = None,
    collapsed: CollapseRecord | None = None,
) -> ArtifactContract:
    """Save weights (safetensors), tokenizer, `config.json` carrying the artifact contract,
    `training_info.json` and the model card; returns the contract written. A `calibration`
    must already be folded into `model`'s head (`training.calibration`). `collapsed`: the
    verdict of a model written although it looks collapsed (`training.collapse`), which the
    worker warns about; a source's old verdict is never carried over.

    The name defaults to the directory's, the version to a hash of the weights written. fp16
    stores half-precision weights (a calibrated head excepted) while `config.dtype` stays
    float32, so stock loaders upcast them (CPU inference in fp16 is slow).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json"):
        (out_dir / stale).unlink(missing_ok=True)
    config = model.config
    labels = tuple(config.id2label[i] for i in range(config.num_labels))
    info = {**info, "parameters": sum(p.numel() for p in model.parameters())}
    dtype = torch.float16 if fp16 else torch.float32
    # a calibrated head stays float32 (a few KB): fp16 rounding of the folded weights would
    # move the calibrated probabilities by up to ~2e-4
    keep = _head_parameter_names(model) if fp16 and calibration is not None else set()
    state = {
        k: v.detach().to(torch.float32 if k in keep else dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    if isinstance(model, MeanPooledClassifier):  # a teacher: encoder directory + head file
        parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "classifier": {}}
        for key, value in state.items():
            part, _, name = key.partition(".")
            if part in parts:
                parts[part][name] = value
        model.encoder.save_pretrained(out_dir, state_dict=parts["encoder"], safe_serialization=True)
        save_file(parts["classifier"], str(out_dir / HEAD_FILE))
    else:
        model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    contract = ArtifactContract(
        model_name=model_name or out_dir.resolve().name,
        model_version=model_version or weights_version(out_dir / WEIGHTS_FILE),
        labels=labels,
        label_thresholds={
            label: float(thresholds.get(label, DEFAULT_THRESHOLD)) for label in labels
        },
        calibration=calibration,
        label_base_rates=base_rates,
        label_training_rates=training_rates,
        collapsed=collapsed,
    )
    for key in ("calibration", "label_base_rates", "label_training_rates", "collapsed"):
        if hasattr(config, key):  # a re-export without calibration drops the old entries
            delattr(config, key)
    for key, value in contract.config_entries().items():
        setattr(config, key, value)
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    config_dict = json.loads((out_dir / CONFIG_FILE).read_text())
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out_dir / CARD_FILE).write_text(model_card(info, contract, config_dict))
    log.info("exported %s (version %s)", out_dir, contract.model_version)
    return contract


def _head_parameter_names(model: PreTrainedModel) -> set[str]:
    """The state-dict keys of the classifier head's weight and bias."""
    from training.modeling import classifier_head

    head = classifier_head(model)
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.weight", f"{prefix}.bias"}


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """`save_pretrained` plus `vocab.txt` (WordPiece) and `special_tokens_map.json`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # don't persist the truncation/padding state of the last call
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(out_dir)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] == list(range(len(vocab))):
            (out_dir / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab))
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
