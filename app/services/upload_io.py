"""Receiving a multipart upload: the file part streams to disk, bounded by the size limit.

FastAPI's `UploadFile` spools the whole body before a route sees it, so a 50 GiB upload
would be written out in full before anyone could say no. This reads the request stream
itself: a `Content-Length` over the limit is refused before a byte is read, and a body
without one (or one that lies) is refused as soon as the file part passes the limit.
The few small form fields beside the file are kept in memory, bounded in size and number.
"""

from __future__ import annotations

import codecs
import logging
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from app.api.errors import ProblemError, field_error, invalid, validation_errors
from app.models.base import new_id

log = logging.getLogger(__name__)

FormT = TypeVar("FormT", bound=BaseModel)

# The multipart part that carries the upload.
FILE_FIELD = "file"
# Room for the multipart boundaries, part headers and form fields beside the file (bytes):
# a body may exceed the file limit by this much before it is refused unread.
FORM_OVERHEAD_BYTES = 64 * 1024
# Form fields are short (a name, an arch, a few numbers): bytes per field, and fields.
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 16


class _TooLargeError(Exception):
    pass


@dataclass
class ReceivedUpload:
    """The file part, on disk at `path`, and the other form fields as text."""

    path: Path
    filename: str | None
    size: int
    fields: dict[str, str] = field(default_factory=dict)


def too_large(max_bytes: int, what: str = "the upload") -> ProblemError:
    return ProblemError(
        413,
        f"{what} is larger than the limit of {max_bytes} bytes (STILLHOUSE_MAX_UPLOAD_BYTES)",
        type_="too-large",
        errors=[field_error(FILE_FIELD, f"larger than {max_bytes} bytes")],
    )


class _Receiver:
    """python-multipart callbacks: file bytes to a pending list, fields to a dict."""

    def __init__(self, max_bytes: int, charset: str) -> None:
        self.max_bytes = max_bytes
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
                raise invalid([field_error(FILE_FIELD, "send exactly one file per request")])
            if b"filename" in options:
                self.filename = options[b"filename"].decode(self.charset, errors="replace")
        elif len(self.fields) >= MAX_FIELDS:
            raise invalid([field_error(self._name, f"more than {MAX_FIELDS} form fields")])

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.max_bytes:
                raise _TooLargeError
            self.pending.append(chunk)
            return
        if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
            raise invalid([field_error(self._name, f"longer than {MAX_FIELD_BYTES} bytes")])
        self._value.extend(chunk)

    def on_part_end(self) -> None:
        if self._is_file:
            self.file_complete = True
            return
        if self._name in self.fields:
            raise invalid([field_error(self._name, "given more than once")])
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


def _check_content_length(request: Request, max_bytes: int) -> None:
    raw = request.headers.get("content-length")
    if raw is None:
        return
    try:
        length = int(raw)
    except ValueError:
        raise ProblemError(400, "Content-Length is not a number", type_="bad-request") from None
    if length > max_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_bytes)


@asynccontextmanager
async def receive_upload(
    request: Request, *, max_bytes: int, dest_dir: Path
) -> AsyncIterator[ReceivedUpload]:
    """Stream the `file` part into a hidden temp file in `dest_dir` (same filesystem as the
    final place, so the caller can `os.replace` it there); the file is removed on exit
    unless the caller moved it away.

    Raises ProblemError: 413 over `max_bytes`, 415 for a body that is not multipart,
    400 for a malformed one, 422 when the `file` part is missing or empty.
    """
    _check_content_length(request, max_bytes)
    boundary, charset = _boundary_and_charset(request)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f".incoming-{new_id()}.part"
    receiver = _Receiver(max_bytes, charset)
    body_limit = max_bytes + FORM_OVERHEAD_BYTES
    body_bytes = 0
    try:
        fh: IO[bytes] = await run_in_threadpool(open, path, "wb")
        try:
            parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                body_bytes += len(chunk)
                if body_bytes > body_limit:
                    raise _TooLargeError
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
            raise invalid(
                [field_error(FILE_FIELD, "missing: send the upload as a multipart part named file")]
            )
        if not receiver.file_complete:
            raise ProblemError(
                400, "the multipart body ended inside the file part", type_="bad-request"
            )
        if receiver.file_bytes == 0:
            raise invalid([field_error(FILE_FIELD, "the uploaded file is empty")])
        log.debug("received %d bytes into %s", receiver.file_bytes, path)
        yield ReceivedUpload(path, receiver.filename, receiver.file_bytes, receiver.fields)
    except _TooLargeError:
        raise too_large(max_bytes) from None
    except FormParserError as exc:
        raise ProblemError(400, f"malformed multipart body: {exc}", type_="bad-request") from None
    except ClientDisconnect:
        log.info("client went away during an upload to %s", request.url.path)
        raise ProblemError(400, "the client disconnected mid-upload", type_="bad-request") from None
    finally:
        with suppress(FileNotFoundError):
            path.unlink()


def parse_form(model: type[FormT], fields: dict[str, str]) -> FormT:
    """The form fields as `model`; 422 naming each bad or unknown field."""
    # Some clients send every optional field, empty when unset.
    values = {k: v for k, v in fields.items() if v.strip() != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise invalid(validation_errors(list(exc.errors()))) from None


def has_control_chars(text: str) -> bool:
    """Control characters (NUL above all, which Postgres text refuses) have no place in names."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def display_name(filename: str | None) -> str | None:
    """The file's own name, without any folders a client put in front of it."""
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if unicodedata.category(ch) != "Cc")
    return base[:200] or None
