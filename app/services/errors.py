"""The errors services raise: what went wrong, in the service's words, never HTTP.

Each names the problem (`detail`) and, where fields or files are at fault, lists them
(`errors`: `{"field", "message"}` pairs). `app.api.errors` is the one place that turns
them into problem+json with a status code; a service never picks one.
"""

from __future__ import annotations

from typing import Any


def field_error(field: str, message: str) -> dict[str, str]:
    """One field's problem, as the `errors` list of a problem document carries it."""
    return {"field": field, "message": message}


class ServiceError(Exception):
    """Base of the domain errors; `detail` is the message a user reads."""

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class NotFoundError(ServiceError):
    """No such row for this owner (another owner's row is not found either)."""

    def __init__(
        self, what: str, id_: str, detail: str | None = None, *, hint: str | None = None
    ) -> None:
        """`hint`: what the id names instead ("this is a job id; its model is ...")."""
        text = detail or f"{what} {id_} does not exist"
        super().__init__(text + (f"; {hint}" if hint else ""))
        self.what = what
        self.id = id_
        self.hint = hint


class ConflictError(ServiceError):
    """The row's state forbids it now (a running job deleted, a dataset in use)."""


class InvalidError(ServiceError):
    """Input that cannot be accepted; `errors` names each field or file at fault."""

    def __init__(self, errors: list[dict[str, Any]], detail: str | None = None) -> None:
        summary = detail or "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        super().__init__(summary, errors=errors)


class TooLargeError(ServiceError):
    """Input over a size bound (a setting names it)."""


class UnauthorizedError(ServiceError):
    """No API key, or one that is not (or no longer) valid."""


class UnavailableError(ServiceError):
    """A part the service relies on is away (the shared artifact store); try again."""


def invalid(field: str, message: str) -> InvalidError:
    """One field's problem as an InvalidError."""
    return InvalidError([field_error(field, message)])
