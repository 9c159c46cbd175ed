"""Request bodies for the prediction routes, bounded by `max_upload_bytes` (413 past it),
and the multipart image upload of `/predict`."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.serving.inputs import InputError


def too_large(limit: int) -> InputError:
    return InputError("body", f"is larger than the limit of {limit} bytes", status=413)


def declared_length(request: Request, limit: int) -> None:
    """413 at once when Content-Length already says the body is too large."""
    value = request.headers.get("content-length")
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise InputError("header.Content-Length", "is not a number", status=400) from None
    if length > limit:
        raise too_large(limit)


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks; InputError 413 as soon as they add up to more than `limit`."""
    declared_length(request, limit)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, limit)])


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a request's Content-Encoding (gzip or deflate, as tritonclient sends them),
    never inflating past `limit`."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InputError(
            "header.Content-Encoding", f"{encoding!r} is not supported (gzip, deflate)", status=415
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError("body", f"is not valid {encoding} data ({exc})", status=400) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(limit)
    return out


async def image_files(
    request: Request, *, limit: int, max_files: int, field: str = "files"
) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of each `files` part of a multipart body."""
    parser = MultiPartParser(
        request.headers, limited_stream(request, limit), max_files=max_files + 1, max_fields=16
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
