"""slimtune: AutoML compression search for PyTorch models.

Per-layer prune ratios and bit-widths are searched under a latency budget measured on
the target; every trial is logged to MLflow and scheduled by Ray Tune.
"""

from slimtune import envs  # noqa: F401 - registers slimtune/Compression-v0 with gymnasium
from slimtune.policy import Policy
from slimtune.result import TrialResult

__version__ = "0.1.0"
__all__ = ["Policy", "TrialResult", "__version__"]
