"""Failures the engine reports to its callers; the API maps each to a status code."""


class EngineError(Exception):
    """Base class; `str(error)` is a message fit for the client."""


class InvalidInput(EngineError):
    """The request is malformed: a field is missing, of the wrong type or out of range (400)."""


class NotFound(EngineError):
    """No such job, or it is not in a state the operation applies to (404)."""


class AlreadyExists(EngineError):
    """The thing to create exists already (409), e.g. POST of a cron entry."""


class Conflict(EngineError):
    """Well-formed but not allowed in the job's current state (422)."""


class ProFeatureRequired(EngineError):
    """The request uses a feature that needs a pro license (403)."""


class Unprocessable(Conflict):
    """Well-formed but cannot be carried out, e.g. a batch expression that fails (422)."""
