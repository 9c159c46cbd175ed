"""Example bodies for the OpenAPI docs (tests check they are valid specs)."""

from __future__ import annotations

from typing import Any

TRAIN_EXAMPLE: dict[str, Any] = {
    "kind": "train",
    "name": "digits-small-cnn",
    "seed": 0,
    "model": {"arch": "small_cnn", "width": 0.5},
    "train": {
        "dataset": {"name": "digits"},
        "epochs": 15,
        "optimizer": {"name": "adamw", "lr": 0.003},
    },
}

PIPELINE_EXAMPLE: dict[str, Any] = {
    "kind": "pipeline",
    "name": "digits-transfer",
    "seed": 0,
    "strategy": "distill_then_finetune",
    "teacher": {
        "source": "train",
        "arch": "resnet18",
        "train": {"dataset": {"name": "digits", "classes": [0, 1, 2, 3, 4]}, "epochs": 20},
    },
    "student": {"arch": "small_cnn", "width": 0.25},
    "distill": {
        "dataset": {"name": "digits"},
        "loss": {"type": "kl", "temperature": 4.0, "alpha": 1.0},
        "epochs": 20,
    },
    "finetune": {
        "dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 30,
    },
    "evaluate": {"dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "split": "test"}},
}

DISTILL_EXAMPLE: dict[str, Any] = {
    "kind": "distill",
    "name": "digits-distill",
    "teacher": {"source": "model", "model_id": "<id of a finished model>"},
    "student": {"arch": "small_cnn", "width": 0.25},
    "distill": {
        "dataset": {"name": "digits", "labels": False},
        "loss": {"type": "mse"},
        "epochs": 10,
    },
}

FINETUNE_EXAMPLE: dict[str, Any] = {
    "kind": "finetune",
    "name": "digits-finetune",
    "model": {"source": "model", "model_id": "<id of a finished model>"},
    "finetune": {
        "dataset": {"name": "digits", "classes": [5, 6, 7, 8, 9], "samples_per_class": 10},
        "epochs": 30,
        "freeze_backbone_epochs": 5,
    },
}

JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "train": {"summary": "Train small_cnn on digits", "value": TRAIN_EXAMPLE},
    "pipeline": {"summary": "Teacher -> student -> target on digits", "value": PIPELINE_EXAMPLE},
    "distill": {"summary": "Distill a finished model into a smaller one", "value": DISTILL_EXAMPLE},
    "finetune": {"summary": "Fine-tune a finished model on 10 shots", "value": FINETUNE_EXAMPLE},
}
