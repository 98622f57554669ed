"""Learning agents that propose policies: PPO (stable-baselines3) on the AMC env.

``CompressionAgent`` (``agent.py``) is the network plus its card, saved as a zip that
loads without unpickling; ``train_agent`` (``ppo.py``) trains it; ``carry_policy``
(``transfer.py``) moves a saved policy to another model by matching layer features.
"""

from slimtune.agents.agent import AgentCard, AgentError, CompressionAgent
from slimtune.agents.ppo import Attempt, TrainedAgent, propose_measured, propose_policy, train_agent

__all__ = ["AgentCard", "AgentError", "Attempt", "CompressionAgent", "TrainedAgent",
           "propose_measured", "propose_policy", "train_agent"]
