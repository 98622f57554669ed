"""Where latency is measured: here, or on the Ray node that carries the target; with a cache.

A target is named in the spec (``target: {name: edge-box}``). ``local`` is this machine.
Any other name is a node of the Ray cluster started with the custom resource
``target:<name>`` (``ray start --address HEAD:6379 --resources '{"target:edge-box": 1}'``):
the exported model is shipped to it as bytes, timed there with the same protocol and
machine lock (:func:`slimtune.measurement.latency.measure_model`), and the figures come back. The
resource amount of 1 also makes Ray run one measurement at a time on that target.

Measurements are cached on disk under ``$SLIMTUNE_CACHE/latency/`` by a hash of the exported
model (the ONNX bytes, or a torch module's architecture and weights), the target (and
this host for ``local``), the runtime settings, the input shape, the protocol and the
runtime library versions, so a repeated policy is not measured twice. Set
``SLIMTUNE_LATENCY_CACHE=0`` to measure everything afresh. A figure taken while the load
average exceeded one per core is not cached, and cached figures expire after a week.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from slimtune.baseline import cache_dir
from slimtune.errors import UserInputError
from slimtune.measurement.latency import (
    LatencyStats,
    MeasureProtocol,
    measure_latency,
    measure_model,
)
from slimtune.policy import write_text_atomic
from slimtune.runtimes import get_runtime

log = logging.getLogger("slimtune")

LOCAL = "local"
RESOURCE_PREFIX = "target:"
CACHE_SWITCH_ENV = "SLIMTUNE_LATENCY_CACHE"
CACHE_VERSION = 1
# A figure is kept only if the machine was quiet while it was taken, and for a week:
# a measurement made under contention must not outlive the contention.
MAX_CACHED_LOAD = 1.0
MAX_CACHE_AGE_S = 7 * 24 * 3600
#: Seconds between checks that a remote target is still in the cluster while it measures.
POLL_SECONDS = 2.0

Subject = Path | nn.Module


class TargetLostError(RuntimeError):
    """The remote target left the cluster (or its node died) before the figures came back."""


def target_resource(name: str) -> str:
    """The Ray custom resource a node carries to be the target ``name``."""
    return f"{RESOURCE_PREFIX}{name}"


def is_local(name: str) -> bool:
    return name == LOCAL


# --- which targets exist -------------------------------------------------------------------


def live_targets() -> dict[str, float]:
    """Targets carried by live nodes of the connected Ray cluster: name -> the node's CPUs."""
    import ray

    found: dict[str, float] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        for key in resources:
            if key.startswith(RESOURCE_PREFIX):
                found[key.removeprefix(RESOURCE_PREFIX)] = float(resources.get("CPU", 0.0))
    return found


def check_local_threads(threads: int) -> None:
    """UserInputError when ``threads`` exceeds this machine's cores."""
    cores = os.cpu_count() or 1
    if threads > cores:
        raise UserInputError(f"target.threads {threads} exceeds the {cores} cores here")


def check_target(name: str, threads: int) -> None:
    """One line and exit 2 if the target cannot measure: unknown, or fewer cores than threads.

    A remote target needs a connected Ray cluster (call after ``ray.init``).
    """
    if is_local(name):
        check_local_threads(threads)
        return
    import ray

    if not ray.is_initialized():
        raise UserInputError(f"target {name!r} is a Ray node: connect to its cluster "
                             "(--address HEAD:6379, or RAY_ADDRESS)")
    targets = live_targets()
    if name not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise UserInputError(
            f"no live Ray node carries {target_resource(name)!r}; targets in this cluster: "
            f"{known} (start one with: ray start --address HEAD:6379 "
            f"--resources '{{\"{target_resource(name)}\": 1}}')")
    cpus = targets[name]
    if cpus and threads > cpus:
        raise UserInputError(f"target.threads {threads} exceeds the {cpus:g} CPUs of target "
                             f"{name!r}")


# --- the cache -----------------------------------------------------------------------------


def subject_digest(subject: Subject) -> str:
    """sha256 of what is measured: the model file's bytes, or a module's structure + weights."""
    h = hashlib.sha256()
    if isinstance(subject, nn.Module):
        h.update(repr(subject).encode())
        for name, tensor in subject.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    else:
        h.update(Path(subject).read_bytes())
    return h.hexdigest()


def _runtime_versions(runtime: str) -> str:
    """The library version(s) the runtime registered as ``runtime`` reports for the key."""
    return get_runtime(runtime).versions()


def cache_key(digest: str, *, target: str, runtime: str, threads: int, batch_size: int,
              input_shape: Sequence[int], protocol: MeasureProtocol) -> str:
    """The cache key of one measurement: what, where, how."""
    where = f"{LOCAL}@{socket.gethostname()}" if is_local(target) else target
    fields = {"version": CACHE_VERSION, "model": digest, "target": where, "runtime": runtime,
              "threads": threads, "batch_size": batch_size, "input_shape": list(input_shape),
              "protocol": asdict(protocol), "library": _runtime_versions(runtime)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def cache_enabled() -> bool:
    return os.environ.get(CACHE_SWITCH_ENV, "1").lower() not in ("0", "false", "no", "off")


def cache_path(key: str) -> Path:
    return cache_dir() / "latency" / f"{key}.json"


def stats_from_dict(data: dict[str, Any]) -> LatencyStats:
    fields = {k: v for k, v in data.items() if k in LatencyStats.__dataclass_fields__}
    fields["round_medians_ms"] = tuple(fields.get("round_medians_ms", ()))
    return LatencyStats(**fields)


def _read_cache(key: str) -> LatencyStats | None:
    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        if time.time() - float(data["measured_at"]) > MAX_CACHE_AGE_S:
            return None  # machines change (updates, thermal state): measure again
        return replace(stats_from_dict(data["stats"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- measuring -----------------------------------------------------------------------------


def measure_on_target(target: str, subject: Subject, *, runtime: str,
                      input_shape: Sequence[int], batch_size: int, threads: int,
                      protocol: MeasureProtocol, use_cache: bool = True) -> LatencyStats:
    """Measure ``subject`` (an .onnx file, or a module for a runtime that consumes modules,
    such as torch) on ``target``.

    A cached figure for the same model, target and settings is returned with
    ``cached=True`` instead of measuring again. Raises TargetLostError when a remote target
    disappears before its figures arrive; nothing is cached then.
    """
    input_shape = tuple(int(s) for s in input_shape)
    key = None
    if use_cache and cache_enabled():
        key = cache_key(subject_digest(subject), target=target, runtime=runtime,
                        threads=threads, batch_size=batch_size, input_shape=input_shape,
                        protocol=protocol)
        hit = _read_cache(key)
        if hit is not None:
            log.info("latency cache hit %s: %.3f ms", key, hit.median_ms)
            return hit
    stats = measure_many_on_target(target, [(subject, input_shape)], runtime=runtime,
                                   batch_size=batch_size, threads=threads,
                                   protocol=protocol)[0]
    load = machine_load()
    if key is not None and load <= MAX_CACHED_LOAD:
        write_text_atomic(cache_path(key), json.dumps(
            {"stats": stats.to_dict(), "measured_at": time.time(), "load_per_core": load},
            sort_keys=True) + "\n")
    elif key is not None:
        log.info("latency not cached: measured at load %.2f per core", load)
    return stats


def machine_load() -> float:
    """The 1-minute load average per core here: above 1, something else competed for the
    cores while we timed (the machine lock only keeps slimtune's own work out)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def measure_many_on_target(target: str, items: Sequence[tuple[Subject, Sequence[int]]], *,
                           runtime: str, batch_size: int, threads: int,
                           protocol: MeasureProtocol,
                           interleave: bool = False) -> list[LatencyStats]:
    """Measure several (subject, input shape) pairs on ``target`` in one go (no cache).

    A remote target gets them all in one Ray task, so it is asked for once. With
    ``interleave``, every round measures every subject once (see :func:`measure_interleaved`).
    """
    if is_local(target):
        if interleave:
            stats = measure_interleaved(items, runtime=runtime, batch_size=batch_size,
                                        threads=threads, protocol=protocol)
        else:
            stats = [measure_model(s, runtime, tuple(shape), batch_size, threads, protocol)
                     for s, shape in items]
        return [replace(st, target=target) for st in stats]
    payload = [(_payload(s), tuple(int(x) for x in shape)) for s, shape in items]
    results = _run_remote(target, payload, runtime=runtime, batch_size=batch_size,
                          threads=threads, protocol=protocol, interleave=interleave)
    return [replace(stats_from_dict(r), target=target) for r in results]


def measure_interleaved(items: Sequence[tuple[Subject, Sequence[int]]], *, runtime: str,
                        batch_size: int, threads: int,
                        protocol: MeasureProtocol) -> list[LatencyStats]:
    """Measure subjects round-robin: round r times every subject once, then round r+1.

    On a shared machine, load comes in bursts; interleaving spreads a burst over all the
    subjects instead of inflating one of them, which is what comparisons (a lookup table,
    a predictor's calibration) need. Each subject's figures: median/p10/p90 are the
    medians over rounds of each round's figure, ``round_medians_ms`` the rounds' medians.
    """
    backend = get_runtime(runtime)
    one_round = replace(protocol, rounds=1)
    per_item: list[list[LatencyStats]] = [[] for _ in items]
    with backend.context(threads):
        runs = [backend.prepare(s, tuple(shape), batch_size, threads) for s, shape in items]
        for r in range(protocol.rounds):
            for i, run_once in enumerate(runs):
                proto = one_round if r == 0 else replace(one_round, warmup=min(2, protocol.warmup))
                per_item[i].append(measure_latency(run_once, runtime=runtime, threads=threads,
                                                   batch_size=batch_size, protocol=proto))
    out = []
    for rounds in per_item:
        med = [st.median_ms for st in rounds]
        out.append(LatencyStats(
            median_ms=float(np.median(med)), p10_ms=float(np.median([s.p10_ms for s in rounds])),
            p90_ms=float(np.median([s.p90_ms for s in rounds])),
            mean_ms=float(np.mean([s.mean_ms for s in rounds])),
            cv=float(np.mean([s.cv for s in rounds])), samples=sum(s.samples for s in rounds),
            rounds=len(rounds), runtime=runtime, threads=threads, batch_size=batch_size,
            round_medians_ms=tuple(med)))
    return out


def _payload(subject: Subject) -> bytes | nn.Module:
    return subject if isinstance(subject, nn.Module) else Path(subject).read_bytes()


def _measure_shipped(payload: list[tuple[bytes | nn.Module, tuple[int, ...]]], runtime: str,
                     batch_size: int, threads: int, protocol: MeasureProtocol,
                     interleave: bool = False) -> list[dict[str, Any]]:
    """Runs on the target node: write each shipped model to a file and measure it there."""
    with tempfile.TemporaryDirectory(prefix="slimtune-target-") as tmp:
        items: list[tuple[Subject, tuple[int, ...]]] = []
        for i, (model, shape) in enumerate(payload):
            if isinstance(model, bytes):
                path = Path(tmp) / f"model{i}.onnx"
                path.write_bytes(model)
                items.append((path, shape))
            else:
                items.append((model, shape))
        if interleave:
            stats = measure_interleaved(items, runtime=runtime, batch_size=batch_size,
                                        threads=threads, protocol=protocol)
        else:
            stats = [measure_model(s, runtime, shape, batch_size, threads, protocol)
                     for s, shape in items]
    return [st.to_dict() for st in stats]


def _run_remote(target: str, payload: list, *, runtime: str, batch_size: int, threads: int,
                protocol: MeasureProtocol, interleave: bool = False) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        raise TargetLostError(f"target {target!r}: not connected to a Ray cluster")
    if target not in live_targets():
        raise TargetLostError(f"target {target!r} is not in the Ray cluster: no live node "
                              f"carries {target_resource(target)!r}")
    task = ray.remote(_measure_shipped).options(
        num_cpus=0, resources={target_resource(target): 1}, max_retries=0,
        name=f"slimtune-measure:{target}")
    ref = task.remote(payload, runtime, batch_size, threads, protocol, interleave)
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
        if ready:
            try:
                return ray.get(ref)
            except (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ActorDiedError, ray.exceptions.TaskUnschedulableError,
                    ray.exceptions.RaySystemError) as err:
                raise TargetLostError(f"target {target!r} failed while measuring: "
                                      f"{type(err).__name__}") from err
            except ray.exceptions.RayTaskError as err:  # the measurement itself raised
                raise err.as_instanceof_cause() from None
        if target not in live_targets():
            ray.cancel(ref, force=True)
            raise TargetLostError(f"target {target!r} left the Ray cluster while measuring "
                                  f"(no live node carries {target_resource(target)!r})")


def connect_target(name: str, threads: int, address: str | None, *,
                   verbose: bool = False) -> None:
    """Connect to the Ray cluster holding remote target ``name`` and check it is there.

    ``address`` (or ``RAY_ADDRESS``) is required: a fresh local Ray carries no target.
    """
    if is_local(name):
        check_local_threads(threads)
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserInputError(f"target {name!r} is a Ray node: give the cluster's address "
                             "(--address HEAD:6379, or RAY_ADDRESS)")
    from slimtune.ray_local import start_ray, stop_ray

    start_ray(address, verbose=verbose)
    try:
        check_target(name, threads)
    except BaseException:
        stop_ray()
        raise
