"""Trial models in MLflow: logged with the ONNX flavour, registered, and read back.

A feasible trial's ``model.onnx`` is logged on the trial's child run as an MLflow model
(ONNX flavour: ``mlflow.onnx.load_model`` and ``mlflow.pyfunc.load_model`` both work),
with a signature and an input example; ``policy.json``, ``layers.json`` and ``model.pt``
travel with it as extra files, so ``slimtune export models:/NAME/VERSION`` gives the same
files as ``slimtune export DIR``. With ``tracking.register_as`` the model becomes a version
of that registered model; the job's best trial gets the alias ``best``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimtune.errors import UserInputError
from slimtune.result import TrialResult
from slimtune.results.outputs import TRIAL_FILES
from slimtune.results.pareto import policy_summary

log = logging.getLogger(__name__)
MODEL_NAME = "model"  # the logged model's name on its run
BEST_ALIAS = "best"
_REGISTRY_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+|latest)|@([A-Za-z0-9_-]+))$")


@dataclass(frozen=True)
class LoggedTrialModel:
    """Where a trial's model went: its logged-model URI and, if registered, its version."""

    trial_id: int
    model_uri: str  # models:/<model_id>
    name: str | None = None
    version: str | None = None

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.name else None


@contextlib.contextmanager
def _mlflow_store(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking and registry URIs at ``uri`` for fluent calls
    (``mlflow.onnx.log_model`` has no client form), then put back exactly what was there:
    the module globals and the ``MLFLOW_*_URI`` variables ``set_tracking_uri`` writes."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def example_input(onnx_path: Path, example: np.ndarray | None = None,
                  rows: int = 2) -> np.ndarray:
    """``example`` (a few real inputs) when given, else a fixed random batch of ``rows``
    shaped like the model's input (its batch dimension is dynamic)."""
    if example is not None:
        return np.ascontiguousarray(example[:rows], dtype=np.float32)
    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type
    shape = [d.dim_value or rows for d in dims.shape.dim]
    shape[0] = rows
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def onnx_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def log_trial_model(uri: str, experiment_id: str, result: TrialResult, trial_dir: Path, *,
                    register_as: str | None = None, example: np.ndarray | None = None,
                    tags: dict[str, str] | None = None) -> LoggedTrialModel:
    """Log ``trial_dir/model.onnx`` on the trial's run; register it if ``register_as``."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    onnx_path = trial_dir / "model.onnx"
    x = example_input(onnx_path, example)
    signature = infer_signature(x, onnx_logits(onnx_path, x))
    info = {"slimtune.trial": str(result.trial_id), "slimtune.policy": policy_summary(
        result.policy)[:500], "accuracy": f"{result.accuracy}",
        "latency_ms": f"{result.latency_ms}", "size_bytes": f"{result.size_bytes}",
        **(tags or {})}
    extra = [str(trial_dir / n) for n in TRIAL_FILES if n != "model.onnx"
             and (trial_dir / n).is_file()]
    with _mlflow_store(uri):
        client = mlflow.MlflowClient(uri)
        logged = client.create_logged_model(experiment_id, name=MODEL_NAME,
                                            source_run_id=result.mlflow_run_id, tags=info,
                                            model_type="slimtune-onnx")
        mlflow.onnx.log_model(onnx.load(str(onnx_path)), name=MODEL_NAME,
                              model_id=logged.model_id, run_id=result.mlflow_run_id,
                              signature=signature, input_example=x,
                              save_as_external_data=False, extra_files=extra,
                              onnx_execution_providers=["CPUExecutionProvider"])
        version = None
        if register_as:
            mv = mlflow.register_model(f"models:/{logged.model_id}", register_as, tags=info)
            version = str(mv.version)
    return LoggedTrialModel(result.trial_id, f"models:/{logged.model_id}", register_as,
                            version)


def set_best_alias(uri: str, model: LoggedTrialModel) -> None:
    from mlflow import MlflowClient

    if model.name and model.version:
        MlflowClient(uri, registry_uri=uri).set_registered_model_alias(
            model.name, BEST_ALIAS, model.version)


def is_registry_uri(text: str) -> bool:
    return text.startswith("models:/")


def export_registered(model_uri: str, tracking_uri: str, dest: Path) -> list[Path]:
    """Write a registered (or logged) model's ``model.onnx`` and the trial files logged
    with it (``policy.json``, ``layers.json``, ``model.pt``) into ``dest``."""
    if not (_REGISTRY_URI.match(model_uri) or re.match(r"^models:/m-[0-9a-f]+$", model_uri)):
        raise UserInputError(f"{model_uri}: use models:/NAME/VERSION, models:/NAME@ALIAS "
                             "or models:/NAME/latest")
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    with _mlflow_store(tracking_uri), tempfile.TemporaryDirectory(prefix="slimtune-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=tmp))
        except MlflowException as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise UserInputError(f"{model_uri} in {tracking_uri}: {first}") from None
        meta = yaml.safe_load((local / "MLmodel").read_text())
        onnx_file = meta.get("flavors", {}).get("onnx", {}).get("data")
        if not onnx_file:
            raise UserInputError(f"{model_uri}: not an ONNX-flavour model")
        dest.mkdir(parents=True, exist_ok=True)
        copied = [Path(shutil.copy2(local / onnx_file, dest / "model.onnx"))]
        for name in TRIAL_FILES:
            src = local / "extra_files" / name
            if name != "model.onnx" and src.is_file():
                copied.append(Path(shutil.copy2(src, dest / name)))
    return copied
