"""Typed errors raised by the library; the CLI and the HTTP layer turn them into exit codes and messages."""


class AdapterctlError(Exception):
    """Base class of every error adapterctl raises on purpose."""

    exit_code = 1
    code: str | None = None
    """A stable name for programs (the `code` of an HTTP error body), where the kind of error has one."""

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        """The request field the error is about, where there is one (the `param` of an HTTP error body)."""


class InvalidInput(AdapterctlError):
    """A value given by the user is malformed or out of range; nothing was written."""

    exit_code = 2


class ContextLengthExceeded(InvalidInput):
    """A prompt and the tokens asked for do not fit the model's context."""

    code = "context_length_exceeded"


class NotFound(AdapterctlError):
    """A line, base model, feedback record or other named thing does not exist."""

    exit_code = 2


class ModelNotFound(NotFound):
    """A request names a model (line, version) that is not served."""

    code = "model_not_found"


class AlreadyExists(AdapterctlError):
    """A thing with that name exists already."""

    exit_code = 2


class InvalidTransition(AdapterctlError):
    """The requested state change is not allowed from the current state."""


class IntegrityError(AdapterctlError):
    """Stored data failed a consistency check (hash chain, artifact hash)."""


class SchemaError(AdapterctlError):
    """The database is missing, not initialised, or at another schema version than this adapterctl."""


class ConfigError(AdapterctlError):
    """The configuration file or an environment variable holds an invalid setting."""

    exit_code = 2


class Interrupted(AdapterctlError):
    """Work was stopped by Ctrl-C or SIGTERM and can be resumed."""

    exit_code = 130


class LockHeld(AdapterctlError):
    """Another job holds the lock for this work; try again later."""

    exit_code = 75


class Busy(AdapterctlError):
    """The database stayed locked by other work for longer than we wait; retrying later will succeed."""

    exit_code = 75


class Unavailable(AdapterctlError):
    """No server can take the request now (a vLLM server down, or a version still loading); retrying will succeed."""

    exit_code = 75
    code = "upstream_unavailable"


class PermissionDenied(AdapterctlError):
    """The acting person lacks the role the action needs (e.g. an admin to manage reviewers)."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a database driver's own message where there is one)."""
    return (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
