"""Policy: one point in the compression search space.

A policy says, for every prunable channel group, which fraction of its channels to
remove, and for every quantizable layer, how many bits its weights keep (32 = float).
Keys are the stable module names of the original model (``layer1.0.conv1``), so a
policy is readable, diffable, and can be matched to another model later.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLOAT_BITS = 32
ALLOWED_BITS = (32, 16, 8, 6, 4, 2)
#: shared-weight cluster counts a layer may have (Deep Compression's k-means codebook)
MIN_CLUSTERS, MAX_CLUSTERS = 2, 256
#: fine-tune hyperparameters a policy may carry (the searched part of the recipe)
RECIPE_KEYS = ("distill", "temperature", "alpha")


#: the built-in per-method fields of a Policy (also its JSON keys)
BUILTIN_KEYS = ("prune", "bits", "sparsity", "clusters", "rank", "recipe", "skip")
#: policy keys of compression methods registered from outside (``slimtune.methods``);
#: their choices live in ``Policy.extra``
EXTRA_KEYS: set[str] = set()


def register_policy_key(key: str) -> None:
    """Let policies carry ``key`` (a plug-in compression method's per-layer choices)."""
    if key in BUILTIN_KEYS or key == "model_signature":
        raise ValueError(f"policy key {key!r} is built in")
    EXTRA_KEYS.add(key)


def under(name: str, blocks: Iterable[str]) -> bool:
    """Whether module ``name`` lies inside one of ``blocks`` (module names)."""
    return any(name.startswith(b + ".") for b in blocks)


@dataclass(frozen=True)
class Policy:
    """Per-layer prune ratios and bit-widths for one model.

    ``prune`` maps a channel group's name to the fraction of its channels removed
    (0 keeps all). ``bits`` maps a layer's name to its weight bit-width. Missing keys
    mean "leave as is" (ratio 0, 32 bits). ``model_signature`` names the LayerTable the
    policy was made for, so applying it to another model is caught.
    """

    prune: Mapping[str, float] = field(default_factory=dict)
    bits: Mapping[str, int] = field(default_factory=dict)
    model_signature: str = ""
    # Deep Compression (slimtune.deep_compression), per layer: the fraction of weights
    # zeroed by magnitude, and the number of shared weight values. Empty: off.
    sparsity: Mapping[str, float] = field(default_factory=dict)
    clusters: Mapping[str, int] = field(default_factory=dict)
    # low-rank factorisation (slimtune.lowrank), per layer: the fraction of its rank kept
    rank: Mapping[str, float] = field(default_factory=dict)
    # the fine-tune recipe this policy was sampled with (``distill``, ``temperature``,
    # ``alpha``); a missing name means the job spec's ``finetune`` value
    recipe: Mapping[str, float | bool] = field(default_factory=dict)
    # elastic depth (slimtune.depth): the residual blocks dropped, by module name; the
    # per-layer choices of layers inside them are dropped with them
    skip: tuple[str, ...] = ()
    # the choices of plug-in compression methods, by their policy key (``EXTRA_KEYS``):
    # ``{"key": {layer: value}}``; empty ones are left out
    extra: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.extra) - EXTRA_KEYS)
        if unknown:
            raise ValueError(f"unknown policy keys: {unknown}")
        object.__setattr__(self, "extra", {k: dict(sorted(v.items()))
                                           for k, v in sorted(self.extra.items()) if v})
        skip = tuple(sorted({str(b) for b in self.skip}))
        object.__setattr__(self, "skip", skip)
        if skip:
            for name in ("prune", "bits", "sparsity", "clusters", "rank"):
                kept = {k: v for k, v in getattr(self, name).items() if not under(k, skip)}
                object.__setattr__(self, name, kept)
            object.__setattr__(self, "extra", {
                key: kept for key, choices in self.extra.items()
                if (kept := {k: v for k, v in choices.items() if not under(k, skip)})})
        for name, ratio in self.prune.items():
            if not 0.0 <= float(ratio) < 1.0:
                raise ValueError(f"prune ratio of {name!r} must be in [0, 1), got {ratio}")
        for name, b in self.bits.items():
            if int(b) not in ALLOWED_BITS:
                raise ValueError(f"bit-width of {name!r} must be one of {ALLOWED_BITS}, got {b}")
        for name, s in self.sparsity.items():
            if not 0.0 <= float(s) < 1.0:
                raise ValueError(f"sparsity of {name!r} must be in [0, 1), got {s}")
        for name, k in self.clusters.items():
            if int(k) != k or not MIN_CLUSTERS <= int(k) <= MAX_CLUSTERS:
                raise ValueError(f"cluster count of {name!r} must be an integer in "
                                 f"[{MIN_CLUSTERS}, {MAX_CLUSTERS}], got {k}")
        for name, r in self.rank.items():
            if not 0.0 < float(r) <= 1.0:
                raise ValueError(f"rank fraction of {name!r} must be in (0, 1], got {r}")
        object.__setattr__(self, "rank",
                           {k: float(v) for k, v in sorted(self.rank.items()) if v < 1.0})
        object.__setattr__(self, "recipe", _checked_recipe(self.recipe))
        object.__setattr__(self, "sparsity",
                           {k: float(v) for k, v in sorted(self.sparsity.items()) if v > 0})
        object.__setattr__(self, "clusters",
                           {k: int(v) for k, v in sorted(self.clusters.items())})
        object.__setattr__(self, "prune", {k: float(v) for k, v in sorted(self.prune.items())})
        object.__setattr__(self, "bits", {k: int(v) for k, v in sorted(self.bits.items())})

    def choices(self, key: str) -> Mapping[str, Any]:
        """The per-layer (or per-group) choices under policy key ``key``: a built-in field
        or a plug-in method's ``extra`` entry (empty when unset)."""
        if key in BUILTIN_KEYS:
            value = getattr(self, key)
            return {b: 1 for b in value} if key == "skip" else value
        return self.extra.get(key, {})

    def ratio(self, group: str) -> float:
        return self.prune.get(group, 0.0)

    def bits_of(self, layer: str) -> int:
        return self.bits.get(layer, FLOAT_BITS)

    @property
    def quantized_layers(self) -> list[str]:
        """Layers whose weights are stored below 32 bits."""
        return [name for name, b in self.bits.items() if b < FLOAT_BITS]

    def key(self) -> str:
        """A canonical string: equal policies have equal keys."""
        return json.dumps({"prune": self.prune, "bits": self.bits, **self._deep()},
                          sort_keys=True)

    def _deep(self) -> dict[str, dict[str, Any]]:
        """The Deep Compression, low-rank, recipe and depth keys, only when set (older
        policies read and key as before)."""
        out: dict[str, dict[str, Any]] = {}
        if self.sparsity:
            out["sparsity"] = dict(self.sparsity)
        if self.clusters:
            out["clusters"] = dict(self.clusters)
        if self.rank:
            out["rank"] = dict(self.rank)
        if self.recipe:
            out["recipe"] = dict(self.recipe)
        if self.skip:
            out["skip"] = list(self.skip)
        out.update({k: dict(v) for k, v in self.extra.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"prune": dict(self.prune), "bits": dict(self.bits),
                "model_signature": self.model_signature, **self._deep()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        unknown = set(data) - {*BUILTIN_KEYS, "model_signature", *EXTRA_KEYS}
        if unknown:
            raise ValueError(f"unknown policy keys: {sorted(unknown)}")
        return cls(prune=dict(data.get("prune", {})), bits=dict(data.get("bits", {})),
                   model_signature=str(data.get("model_signature", "")),
                   sparsity=dict(data.get("sparsity", {})),
                   clusters=dict(data.get("clusters", {})),
                   rank=dict(data.get("rank", {})),
                   recipe=dict(data.get("recipe", {})),
                   skip=tuple(data.get("skip", ())),
                   extra={k: dict(data[k]) for k in EXTRA_KEYS if k in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a reader never sees a half-written policy file."""
        write_text_atomic(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        return cls.from_json(Path(path).read_text())


def _checked_recipe(recipe: Mapping[str, Any]) -> dict[str, float | bool]:
    """A policy's recipe, validated and normalised (``distill`` a bool, the others float)."""
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"unknown recipe keys {unknown}; valid: {list(RECIPE_KEYS)}")
    out: dict[str, float | bool] = {}
    for name, value in sorted(recipe.items()):
        if name == "distill":
            if isinstance(value, str) or value not in (True, False):
                raise ValueError(f"recipe distill must be true or false, got {value!r}")
            out[name] = bool(value)
            continue
        if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
            raise ValueError(f"recipe {name} must be a number, got {value!r}")
        if name == "temperature" and not value > 0:
            raise ValueError(f"recipe temperature must be > 0, got {value}")
        if name == "alpha" and not 0.0 <= value <= 1.0:
            raise ValueError(f"recipe alpha must be in [0, 1], got {value}")
        out[name] = float(value)
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and an atomic rename."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename: a reader
    never sees a half-written file, and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
