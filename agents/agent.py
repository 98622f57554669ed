"""CompressionAgent: a PPO actor-critic that sees one layer at a time, saved safely.

The network's input is one layer's features (``slimtune.envs.features``), so the same
agent runs on a model of any depth. ``agent.zip`` holds two members only: a JSON card
(format, observation layout, network shape, what it was trained on) and the network's
state dict, read back with ``torch.load(weights_only=True)``. Unlike SB3's own zip, it
holds no pickled objects, so loading a file from elsewhere runs no code.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from slimtune.envs.features import OBS_FEATURES, OBS_HIGH, OBS_LAYOUT, OBS_LOW
from slimtune.errors import UserInputError

AGENT_FORMAT = "slimtune-agent/1"
CARD = "slimtune-agent.json"
WEIGHTS = "policy.pth"
MAX_AGENT_BYTES = 64 * 1024 * 1024


class AgentError(UserInputError):
    """An agent file that is missing, not an agent, or made for another observation layout."""


@dataclass(frozen=True)
class AgentCard:
    """What an agent is and what it was trained on."""

    obs_layout: str = OBS_LAYOUT
    net_arch: tuple[int, ...] = (64, 64)
    format: str = AGENT_FORMAT
    trained_on: Mapping[str, Any] = field(default_factory=dict)  # model, budget, episodes...

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["net_arch"] = list(self.net_arch)
        data["trained_on"] = dict(self.trained_on)
        return data


def observation_space() -> spaces.Box:
    return spaces.Box(OBS_LOW, OBS_HIGH, (len(OBS_FEATURES),), dtype=np.float32)


def action_space() -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


def make_policy_network(net_arch: tuple[int, ...]) -> ActorCriticPolicy:
    """The SB3 actor-critic every slimtune agent uses (PPO's ``MlpPolicy``)."""
    return ActorCriticPolicy(observation_space(), action_space(), lambda _: 0.0,
                             net_arch=list(net_arch))


class CompressionAgent:
    """A trained (or fresh) policy network plus its card."""

    def __init__(self, network: ActorCriticPolicy, card: AgentCard) -> None:
        self.network = network.eval()
        self.card = card

    def act(self, observation: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        action, _ = self.network.predict(observation, deterministic=deterministic)
        return np.asarray(action, dtype=np.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the zip atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = io.BytesIO()
        torch.save(self.network.state_dict(), weights)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(CARD, json.dumps(self.card.to_dict(), indent=2, sort_keys=True))
                zf.writestr(WEIGHTS, weights.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompressionAgent:
        """Read and check an agent.zip; AgentError (one line) if it is not a usable agent."""
        card, state = read_agent_file(Path(path))
        network = make_policy_network(card.net_arch)
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise AgentError(f"{path}: the weights do not fit the network its card "
                             f"describes ({str(err).splitlines()[0]})") from None
        return cls(network, card)


def read_agent_file(path: Path) -> tuple[AgentCard, dict[str, torch.Tensor]]:
    """Validate an agent.zip before any of it is used: members, card, layout, weights."""
    if not path.is_file():
        raise AgentError(f"{path}: no such agent file")
    if path.stat().st_size > MAX_AGENT_BYTES:
        raise AgentError(f"{path}: too large for an agent ({path.stat().st_size} bytes)")
    if not zipfile.is_zipfile(path):
        raise AgentError(f"{path}: not an agent (not a zip file)")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if names != {CARD, WEIGHTS}:
            raise AgentError(f"{path}: not a slimtune agent (members {sorted(names)}, "
                             f"expected {CARD} and {WEIGHTS})")
        try:
            raw = json.loads(zf.read(CARD))
        except (ValueError, UnicodeDecodeError):
            raise AgentError(f"{path}: the agent card is not valid JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != AGENT_FORMAT:
            raise AgentError(f"{path}: unknown agent format {raw.get('format')!r} "
                             f"(this slimtune reads {AGENT_FORMAT})")
        if raw.get("obs_layout") != OBS_LAYOUT:
            raise AgentError(f"{path}: the agent was trained for another observation layout "
                             f"({str(raw.get('obs_layout'))[:40]}...); retrain it with this "
                             "slimtune version")
        arch = raw.get("net_arch")
        if not (isinstance(arch, list) and arch and all(isinstance(n, int) and 0 < n <= 4096
                                                        for n in arch)):
            raise AgentError(f"{path}: invalid net_arch in the agent card")
        try:
            state = torch.load(io.BytesIO(zf.read(WEIGHTS)), weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise AgentError(f"{path}: the agent weights cannot be read safely "
                             f"({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AgentError(f"{path}: the agent weights are not a state dict")
    card = AgentCard(obs_layout=raw["obs_layout"], net_arch=tuple(arch),
                     trained_on=dict(raw.get("trained_on") or {}))
    return card, state
