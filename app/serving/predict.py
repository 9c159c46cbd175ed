"""`/predict`: inputs from a JSON body or image files to the model's tensor, and logits to
the answer (`predictions` with label, index, score and top_k; `values` for regression).

The route reads the body (app/api/routes/models.py); everything between the bytes and
the answer is here. Large bodies and large answers are worked on in a thread, so that
the event loop keeps serving small requests meanwhile.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from app.serving.backends import LoadedModel
from app.serving.inputs import (
    InputError,
    Limits,
    conform,
    images_to_input,
    json_object,
    nested_array,
    on_model_scale,
)
from app.serving.oip import softmax
from app.serving.server import ModelServer

# JSON bodies larger than this are decoded in a thread, off the event loop (bytes).
INLINE_DECODE_BYTES = 64 * 1024
# Answers with more top-k entries than this are built in a thread too: 256 images with
# k=1000 took a quarter of a second of Python, in which the loop served nobody else.
INLINE_ANSWER_ENTRIES = 4096


async def json_body_inputs(body: bytes, model: LoadedModel, limits: Limits) -> np.ndarray:
    """`{"inputs": [...]}` as the model's input."""
    if len(body) <= INLINE_DECODE_BYTES:
        return json_inputs(body, model, limits)
    return await run_in_threadpool(json_inputs, body, model, limits)


def json_inputs(body: bytes, model: LoadedModel, limits: Limits) -> np.ndarray:
    data = json_object(body, expected=': {"inputs": [...]}')
    unknown = sorted(set(data) - {"inputs", "scale"})
    if unknown:
        raise InputError(
            unknown[0], 'is an unknown field; the body is {"inputs": [...], "scale": optional}'
        )
    if "inputs" not in data:
        raise InputError("inputs", "is missing")
    given = data.get("scale")
    if given is not None and (
        isinstance(given, bool) or not isinstance(given, int | float) or not 0 < given < 1e9
    ):
        raise InputError("scale", "must be a positive number (e.g. 255 for 0-255 pixels)")
    x = nested_array(data["inputs"], field="inputs", limits=limits)
    x = conform(x, field="inputs", shape=model.input_shape, limits=limits, strict=False)
    return on_model_scale(x, field="inputs", model_scale=model.scale, given_scale=given)


async def image_inputs(
    files: list[tuple[str, bytes]], model: LoadedModel, limits: Limits
) -> np.ndarray:
    """PNG/JPEG files as the model's input (decoded in a thread)."""
    return await run_in_threadpool(
        images_to_input,
        files,
        field="files",
        shape=model.input_shape,
        scale=model.scale,
        limits=limits,
    )


async def predict(server: ModelServer, model: LoadedModel, x: np.ndarray, k: int) -> bytes:
    """The JSON answer for inputs `x` already shaped for `model`."""
    logits = await server.logits(model, x)
    if len(logits) * min(k, logits.shape[1]) <= INLINE_ANSWER_ENTRIES:
        return answer(logits, model.classes, k, model.task)
    return await run_in_threadpool(answer, logits, model.classes, k, model.task)


def answer(logits: np.ndarray, classes: list[str], k: int, task: str = "classification") -> bytes:
    """The response body: `predictions` as JSON (for regression models: `values`, one
    per target, in the order of `classes`, i.e. target_0, target_1, ...)."""
    if task == "regression":
        body = {"predictions": [{"values": row.tolist()} for row in logits.astype(np.float64)]}
    else:
        body = predictions(logits, classes, k)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def predictions(logits: np.ndarray, classes: list[str], k: int) -> dict[str, Any]:
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    # argpartition then sort: O(classes) per row, for models with many classes.
    if k < probs.shape[1]:
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(probs.shape[1]), (len(probs), 1))
    out = []
    for row, candidates in zip(probs, top, strict=True):
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        top_k = [{"label": classes[i], "score": float(row[i])} for i in order]
        best = int(order[0])
        out.append(
            {"label": classes[best], "index": best, "score": float(row[best]), "top_k": top_k}
        )
    return {"predictions": out}
