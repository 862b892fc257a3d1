"""mixlab's generation engine: continuous batching over the hybrid model's paged cache (see `engine.py`).

    from mixlab.evals.engine import Engine, EngineWorker, CapacityError
"""

from mixlab.evals.engine.engine import CapacityError, Engine, Request
from mixlab.evals.engine.worker import EngineWorker

__all__ = ["CapacityError", "Engine", "EngineWorker", "Request"]
