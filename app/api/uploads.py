"""Multipart bodies: uploads (a dataset or a checkpoint file, streamed to disk) and the
image files of `/predict`.

FastAPI's `UploadFile` spools the whole body before a route sees it, so a 50 GiB upload
would be written out in full before anyone could say no. `receive_upload` reads the
request stream itself, through the body limiter (app/api/body_limit.py): a
`Content-Length` over the limit is refused before a byte is read, and a body without one
(or one that lies) is refused as soon as the file part passes the limit. The few small
form fields beside the file are kept in memory, bounded in size and number.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

from fastapi import Depends
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.api.body_limit import (
    BodyLimit,
    check_declared,
    limited_stream,
    prediction_limit,
    read_body,
    spec_limit,
    upload_limit,
)
from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.errors import ProblemError, validation_errors
from app.api.responses import problems
from app.config import Settings
from app.models.base import new_id
from app.services.errors import InvalidError, field_error
from app.services.upload_rules import FILE_FIELD
from app.serving.inputs import InputError

log = logging.getLogger(__name__)

FormT = TypeVar("FormT", bound=BaseModel)
T = TypeVar("T")
# Room for the multipart boundaries, part headers and form fields beside the file (bytes):
# a body may exceed the file limit by this much before it is refused unread.
FORM_OVERHEAD_BYTES = 64 * 1024
# Form fields are short (a name, an arch, a few numbers): bytes per field, and fields.
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16


@dataclass
class ReceivedUpload:
    """The file part, on disk at `path`, and the other form fields as text."""

    path: Path
    filename: str | None
    size: int
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart callbacks: file bytes to a pending list, fields to a dict."""

    def __init__(self, bound: BodyLimit, charset: str) -> None:
        self.bound = bound
        self.charset = charset
        self.fields: dict[str, str] = {}
        self.file_parts = 0
        self.file_bytes = 0
        self.file_complete = False
        self.filename: str | None = None
        self.pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ProblemError(
                400, "a multipart part has no name in its Content-Disposition", type_="bad-request"
            )
        self._name = options[b"name"].decode(self.charset, errors="replace")
        # The part named `file` is the upload, with or without a filename (curl -F file=<x).
        self._is_file = self._name == FILE_FIELD
        if self._is_file:
            self.file_parts += 1
            if self.file_parts > 1:
                raise InvalidError([field_error(FILE_FIELD, "send exactly one file per request")])
            if b"filename" in options:
                self.filename = options[b"filename"].decode(self.charset, errors="replace")
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidError([field_error(self._name, f"more than {MAX_FIELDS} form fields")])

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.bound.limit:
                raise self.bound.too_large()
            self.pending.append(chunk)
            return
        if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
            raise InvalidError([field_error(self._name, f"longer than {MAX_FIELD_BYTES} bytes")])
        self._value.extend(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            self.file_complete = True
            return
        if self._name in self.fields:
            raise InvalidError([field_error(self._name, "given more than once")])
        self.fields[self._name] = self._value.decode(self.charset, errors="replace")

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }


def _boundary_and_charset(request: Request) -> tuple[bytes, str]:
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise ProblemError(
            415,
            "send multipart/form-data with the upload in a part named `file` "
            f"(got Content-Type {request.headers.get('content-type')!r})",
            type_="unsupported-media-type",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ProblemError(400, "multipart/form-data without a boundary", type_="bad-request")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        # Part names are decoded with it later, inside the parser's callbacks.
        codecs.lookup(charset)
    except LookupError:
        raise ProblemError(
            400, f"unknown charset {charset!r} in the Content-Type", type_="bad-request"
        ) from None
    return boundary, charset


@asynccontextmanager
async def receive_upload(request: Request, *, dest_dir: Path) -> AsyncIterator[ReceivedUpload]:
    """Stream the `file` part into a hidden temp file in `dest_dir` (same filesystem as the
    final place, so the caller can `os.replace` it there); the file is removed on exit
    unless the caller moved it away.

    Raises ProblemError: 413 over STILLHOUSE_MAX_UPLOAD_BYTES, 415 for a body that is
    not multipart, 400 for a malformed one, 422 when the `file` part is missing or empty.
    """
    bound = upload_limit(slack=FORM_OVERHEAD_BYTES)
    check_declared(request.headers, bound)
    boundary, charset = _boundary_and_charset(request)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f".incoming-{new_id()}.part"
    receiver = _Receiver(bound, charset)
    try:
        fh: IO[bytes] = await run_in_threadpool(open, path, "wb")
        try:
            parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in limited_stream(request, bound):
                parser.write(chunk)
                if receiver.pending:
                    data = b"".join(receiver.pending)
                    receiver.pending.clear()
                    # Disk writes off the event loop: other requests keep being served.
                    await run_in_threadpool(fh.write, data)
            parser.finalize()
        finally:
            await run_in_threadpool(fh.close)
        if receiver.file_parts == 0:
            raise InvalidError(
                [field_error(FILE_FIELD, "missing: send the upload as a multipart part named file")]
            )
        if not receiver.file_complete:
            raise ProblemError(
                400, "the multipart body ended inside the file part", type_="bad-request"
            )
        if receiver.file_bytes == 0:
            raise InvalidError([field_error(FILE_FIELD, "the uploaded file is empty")])
        log.debug("received %d bytes into %s", receiver.file_bytes, path)
        yield ReceivedUpload(path, receiver.filename, receiver.file_bytes, receiver.fields)
    except FormParserError as exc:
        raise ProblemError(400, f"malformed multipart body: {exc}", type_="bad-request") from None
    except ClientDisconnect:
        log.info("client went away during an upload to %s", request.url.path)
        raise ProblemError(400, "the client disconnected mid-upload", type_="bad-request") from None
    finally:
        with suppress(FileNotFoundError):
            path.unlink()


def is_json(request: Request) -> bool:
    """Whether the body is JSON (a route that takes an upload or a JSON body)."""
    content_type, _ = parse_options_header(request.headers.get("content-type"))
    return content_type == b"application/json"


async def json_form(request: Request, model: type[FormT]) -> FormT:
    """A small JSON body (at most STILLHOUSE_MAX_SPEC_BYTES) as `model`; 400 for one that
    is not JSON, 422 naming each bad or unknown field."""
    body = await read_body(request, spec_limit())
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = list(exc.errors())
        if any(e["type"] == "json_invalid" for e in errors):
            raise ProblemError(
                400, f"the body is not valid JSON ({errors[0]['msg']})", type_="bad-request"
            ) from None
        raise InvalidError(validation_errors(errors)) from None


def parse_form(model: type[FormT], fields: dict[str, str]) -> FormT:
    """The form fields as `model`; 422 naming each bad or unknown field."""
    # Some clients send every optional field, empty when unset.
    values = {k: v for k, v in fields.items() if v.strip() != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidError(validation_errors(list(exc.errors()))) from None


@dataclass
class UploadRoute:
    """What an upload route works with: the request, the caller, a write session for the
    service, and the settings. The key lookup's session is closed before the upload
    streams in, so that a long upload holds no pooled connection for it."""

    request: Request
    response: Response
    owner: str
    session: Session
    settings: Settings

    async def record(self, record: Callable[[], T]) -> T:
        """Run `record()` (a service that stores a row without an upload) in a thread,
        and point `Location` at the new row."""
        row = await run_in_threadpool(record)
        self.response.headers["Location"] = f"{self.request.url.path}/{row.id}"  # type: ignore[attr-defined]
        return row

    async def store(self, folder: str, store: Callable[[ReceivedUpload], T]) -> T:
        """Receive the upload into the artifact dir's `folder`, run `store(upload)` (the
        service: check, move into place, record) in a thread, and point `Location` at the
        new row; the spooled file is gone afterwards either way."""
        dest_dir = self.settings.artifact_dir / folder
        async with receive_upload(self.request, dest_dir=dest_dir) as upload:
            row = await run_in_threadpool(store, upload)
        self.response.headers["Location"] = f"{self.request.url.path}/{row.id}"  # type: ignore[attr-defined]
        return row


def upload_route(
    request: Request,
    response: Response,
    owner: OwnerDep,
    auth_session: SessionDep,
    session: WriteSessionDep,
    settings: SettingsDep,
) -> UploadRoute:
    auth_session.close()
    return UploadRoute(request, response, owner, session, settings)


UploadDep = Annotated[UploadRoute, Depends(upload_route)]


# The `name` form field of an upload: printable text (app/schemas/names.py).
NAME_FIELD = {
    "type": "string",
    "maxLength": 200,
    "pattern": "^[^\\x00-\\x1f\\x7f]*$",
    "description": "A name to list it by; defaults to the uploaded file's name.",
}


def upload_openapi(
    file_description: str, *, required: tuple[str, ...] = (), fields: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI request body of an upload route: the `file` part and its form fields."""
    file_part = {"type": "string", "format": "binary", "description": file_description}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FILE_FIELD, *required],
                        "properties": {FILE_FIELD: file_part, **fields},
                    }
                }
            },
        }
    }


def upload_errors(invalid_file: str) -> dict[int | str, dict[str, Any]]:
    """The error answers of an upload route; `invalid_file` says how a 422 names the fault."""
    return problems(
        400,
        401,
        413,
        415,
        422,
        custom={400: "Malformed multipart body", 415: "Not multipart/form-data", 422: invalid_file},
    )


async def image_files(
    request: Request, *, max_files: int, field: str = "files"
) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of each `files` part of a `/predict` multipart body."""
    parser = MultiPartParser(
        request.headers,
        limited_stream(request, prediction_limit()),
        max_files=max_files + 1,
        max_fields=16,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        message = str(exc.message)
        if "Too many files" in message:
            raise InputError(
                field, f"more than {max_files} files; at most {max_files} per request", status=413
            ) from None
        raise InputError("body", f"is not a valid multipart body: {message}", status=400) from None
    try:
        out: list[tuple[str, bytes]] = []
        for name, value in form.multi_items():
            if name != field:
                raise InputError(
                    name, f"is an unknown field; send the images as `{field}` (one part per image)"
                )
            if not isinstance(value, UploadFile):
                raise InputError(field, "must be files (PNG or JPEG), not text fields")
            out.append((value.filename or "", await value.read()))
        return out
    finally:
        await form.close()
