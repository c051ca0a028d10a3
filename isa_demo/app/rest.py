"""``POST /api/compose``: a composed query in one plain HTTP request, beside gradio's API.

Gradio's own API takes three requests per query (upload the reference, submit the event, read
its event stream), and each goes through gradio's queue and event machinery. Scripts and other
services only need the answer, so the app also serves one multipart route::

    curl -F image=@photo.jpg -F "modifier=make the circle red" -F method=isa -F k=5 \\
         http://127.0.0.1:7860/api/compose

Form fields: ``image`` (a file; the reference), ``modifier``, ``method`` (default: the app's
default), ``backbone`` (ISA's light backbone; default the lightest), ``k`` (default 10). The
answer is the JSON of gradio's ``/compose``. The query goes through the same
:meth:`DemoService.compose <isa_demo.app.service.DemoService.compose>` (the same checks and
messages, the same batching of concurrent queries). Refusals are JSON ``{"error": message}``:

- 400: an input the checks refuse (unreadable image, empty modifier, top-K out of range, unknown
  method, a body that is not a multipart form);
- 413: a body larger than the app's upload limit (``--max-file-size``), read no further;
- 503: ``--max-queue`` queries already in flight (the busy message of the page's queue).

The upload lives in a temporary folder for the length of the request only.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Callable

from ..errors import UserError
from .widgets import BUSY

log = logging.getLogger(__name__)

ROUTE = "/api/compose"
FIELDS = ("image", "modifier", "method", "backbone", "k")
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the text fields, beyond the file itself
MAX_FIELD_BYTES = 1024 * 1024  # a text field larger than this is refused (the modifier check says the rest)


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _body(request, limit: int | None) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (None: no limit)."""
    declared = request.headers.get("content-length")
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, _too_large(limit))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if limit is not None and len(body) > limit:
            raise _Refused(413, _too_large(limit))
    return bytes(body)


def _too_large(limit: int) -> str:
    return (f"the upload is too large: the limit is {(limit - FORM_OVERHEAD) / 1024 ** 2:.1f} MB "
            f"(the app's --max-file-size); scale the image down and send it again")


def _safe_name(filename: str | None) -> str:
    name = os.path.basename((filename or "").replace("\\", "/"))
    name = re.sub(r"[^\w.\- ]", "_", name).strip(" .")[:100]
    return name or "reference"


async def _form(request, body: bytes) -> dict:
    """The multipart form of an already read ``body``: ``{field: str}`` plus ``image``: (name, bytes)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise _Refused(400, "send a multipart form (curl -F image=@photo.jpg -F modifier=...), with the fields "
                            + ", ".join(FIELDS))
    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=len(FIELDS),
                                                         max_part_size=MAX_FIELD_BYTES)
    except HTTPException as e:  # starlette's own refusal of a malformed form
        raise _Refused(400, f"the form cannot be read: {e.detail}; send at most one file (image) and the fields "
                            + ", ".join(FIELDS)) from None
    try:
        out: dict = {}
        for key, value in form.multi_items():
            if key not in FIELDS:
                raise _Refused(400, f"unknown field {key[:40]!r}: the fields are {', '.join(FIELDS)}")
            if key == "image":
                if isinstance(value, str):
                    raise _Refused(400, "the field image must be a file (curl -F image=@photo.jpg), not text")
                out["image"] = (_safe_name(value.filename), await value.read())
            elif not isinstance(value, str):
                raise _Refused(400, f"the field {key} must be text, not a file")
            else:
                out[key] = value
        return out
    finally:
        await form.close()


def compose_route(service, max_file_size: Callable[[], int | None], max_waiting: int):
    """The starlette route serving :data:`ROUTE` for ``service`` (see the module doc).
    ``max_file_size()``: the upload limit in bytes (None: none), read per request; the app passes
    the one gradio parsed from ``--max-file-size`` for its own uploads, so both agree."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    in_flight = 0  # changed on the event loop only

    def run(fields: dict) -> dict:
        method = fields.get("method") or service.catalogue.default_method()
        image = fields.get("image")
        with tempfile.TemporaryDirectory(prefix="isa-demo-api-") as tmp:
            path = None
            if image is not None:
                path = os.path.join(tmp, image[0])
                with open(path, "wb") as f:
                    f.write(image[1])
            return service.compose(path, fields.get("modifier"), method, fields.get("backbone") or None,
                                   fields.get("k", 10), explain=False).to_json()

    async def endpoint(request):
        nonlocal in_flight
        if in_flight >= max_waiting:
            return JSONResponse({"error": BUSY.format(waiting=in_flight, limit=max_waiting)}, status_code=503)
        in_flight += 1
        try:
            cap = max_file_size()
            fields = await _form(request, await _body(request, None if cap is None else cap + FORM_OVERHEAD))
            return JSONResponse(await run_in_threadpool(run, fields))
        except _Refused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception:  # noqa: BLE001 - a bug: the log gets the traceback, the client one line
            log.exception("unexpected error in %s", ROUTE)
            return JSONResponse({"error": "something went wrong on the server; the query was not run. Try again, "
                                          "or another image"}, status_code=500)
        finally:
            in_flight -= 1

    return Route(ROUTE, endpoint, methods=["POST"])
