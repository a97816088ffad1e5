"""Errors that reach the user as one line naming the field and what was expected."""

from __future__ import annotations

from pydantic import ValidationError

# Exit codes of `kubeslim` commands. A stage Job fails at once on EXIT_BAD_INPUT
# (its podFailurePolicy); any other non-zero code is retried with the Job's back-off.
EXIT_FAILED = 1  # something broke that may not break again (a crashed process, ...)
EXIT_BAD_INPUT = 2  # the spec or what it points at is wrong: retrying cannot help
EXIT_TRANSIENT = 75  # EX_TEMPFAIL: a service did not answer; try again later


class KubeslimError(Exception):
    """Any error kubeslim reports to the user without a traceback."""

    exit_code = EXIT_FAILED


class SpecError(KubeslimError):
    """A value in the spec (or what it points at) is not what was expected."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StoreError(KubeslimError):
    """The artifact store refuses an operation for a reason in its settings
    (scheme, credentials, bucket, permissions): bad input, not retried."""

    exit_code = EXIT_BAD_INPUT


class StoreUnavailable(StoreError):
    """The artifact store did not answer (unreachable endpoint, timeout, 5xx)."""

    exit_code = EXIT_TRANSIENT


class MissingArtifact(StoreError):
    """An object the pipeline wrote earlier is not there (yet): retried."""

    exit_code = EXIT_FAILED


def describe_validation_error(err: ValidationError, root: str = "spec") -> SpecError:
    """The first pydantic error as a SpecError with a dotted camelCase path."""
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"]]
    field = ".".join([root, *parts] if root else parts) or root
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] in (
        "less_than",
        "greater_than",
        "less_than_equal",
        "greater_than_equal",
        "int_parsing",
        "float_parsing",
        "missing",
        "literal_error",
        "extra_forbidden",
        "string_type",
        "list_type",
        "dict_type",
    ):
        message = f"{message[0].lower()}{message[1:]}"
        if first["type"] not in ("missing", "extra_forbidden"):
            message += f", got {first['input']!r}"
    if first["type"] == "enum" and "expected" in first.get("ctx", {}):
        message = f"expected one of {first['ctx']['expected']}, got {first['input']!r}"
    return SpecError(field, message)
