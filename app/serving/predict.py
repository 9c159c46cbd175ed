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
    npy_array,
    on_model_scale,
)
from app.serving.oip import softmax
from app.serving.server import ModelServer

# `k` of /predict: classes in each answer's top_k, by default and at most (the route's
# query parameter and the fast path read it with these).
K_DEFAULT, K_MAX = 3, 1000
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


async def npy_body_inputs(body: bytes, model: LoadedModel, limits: Limits) -> np.ndarray:
    """A `.npy` body as the model's input (decoded in a thread when large)."""
    if len(body) <= INLINE_DECODE_BYTES:
        return npy_inputs(body, model, limits)
    return await run_in_threadpool(npy_inputs, body, model, limits)


def npy_inputs(body: bytes, model: LoadedModel, limits: Limits) -> np.ndarray:
    """N x C x H x W or N x H x W, converted and resized like JSON inputs, and on the
    model's scale like them whatever the dtype (uint8 pixels suit a 0-255 model; a 0-1
    model takes floats)."""
    x, dtype = npy_array(body, field="body", limits=limits)
    x = conform(x, field="body", shape=model.input_shape, limits=limits, strict=False)
    try:
        return on_model_scale(x, field="body", model_scale=model.scale, given_scale=None)
    except InputError as exc:
        # A .npy body has no "scale" field to name: say how to fix the array instead.
        raise InputError(
            "body",
            f"({dtype}) has values from {float(x.min()):g} to {float(x.max()):g}, but this "
            f"model takes inputs on 0-{model.scale:g} (its training data's scale): send "
            f"the array on that scale (e.g. divide 0-255 pixels by 255 for a 0-1 model)",
        ) from exc


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


# Up to this many classes, top-k is sorted in plain Python: for a few classes numpy's
# per-call cost (argpartition, argsort) outweighs the work, and it ran on every request.
SMALL_CLASS_COUNT = 64


def predictions(logits: np.ndarray, classes: list[str], k: int) -> dict[str, Any]:
    probs = softmax(logits)
    n_classes = probs.shape[1]
    k = min(k, n_classes)
    if n_classes <= SMALL_CLASS_COUNT:
        out = []
        every = range(n_classes)
        for row in probs.tolist():
            # sorted() is stable with reverse=True too: ties keep the class order.
            order = sorted(every, key=row.__getitem__, reverse=True)[:k]
            best = order[0]
            out.append(
                {
                    "label": classes[best],
                    "index": best,
                    "score": row[best],
                    "top_k": [{"label": classes[i], "score": row[i]} for i in order],
                }
            )
        return {"predictions": out}
    # argpartition then sort: O(classes) per row, for models with many classes.
    if k < n_classes:
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(n_classes), (len(probs), 1))
    out = []
    for row, candidates in zip(probs, top, strict=True):
        order = candidates[np.argsort(-row[candidates], kind="stable")]
        top_k = [{"label": classes[i], "score": float(row[i])} for i in order]
        best = int(order[0])
        out.append(
            {"label": classes[best], "index": best, "score": float(row[best]), "top_k": top_k}
        )
    return {"predictions": out}
