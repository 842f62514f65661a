"""The job engine: lifecycle, in-memory indexes, dispatch to take streams,
scheduler and reaper. No HTTP here; the API layer translates requests into
calls on `Engine`.
"""

from zizq.queue.engine import Engine, EngineSettings
from zizq.queue.errors import Conflict, InvalidInput, NotFound, ProFeatureRequired

__all__ = ["Conflict", "Engine", "EngineSettings", "InvalidInput", "NotFound", "ProFeatureRequired"]
