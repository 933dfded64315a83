"""Weights layer: lazy loading, validation, task vectors, saving and fingerprints of models."""

from cycleqd.weights.fingerprint import fingerprint_tensors
from cycleqd.weights.save import save_model
from cycleqd.weights.source import ModelSource, open_model
from cycleqd.weights.task_vector import apply_task_vector, task_vector
from cycleqd.weights.validate import ScanResult, scan_model, validate_models

__all__ = [
    "ModelSource",
    "ScanResult",
    "apply_task_vector",
    "fingerprint_tensors",
    "open_model",
    "save_model",
    "scan_model",
    "task_vector",
    "validate_models",
]
