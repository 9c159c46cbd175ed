"""Open Inference Protocol (KServe V2) tensors: decoding infer requests, encoding answers.

Both the plain JSON form (`data` as a flat or nested list) and the binary tensor
extension (`Inference-Header-Content-Length`: a JSON header, then raw little-endian
tensors, each input's size in `parameters.binary_data_size`) are understood, as
tritonclient.http sends them. Outputs are `logits` and `probabilities` (softmax), both
FP32 [N, classes]; a request's `outputs` selects them, `binary_data` per output (or
`binary_data_output` for the request) asks for the binary form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.serving.backends import LoadedModel
from app.serving.inputs import InputError, Limits, conform, flat_array, json_object

MODEL_VERSION = "1"
OUTPUTS = ("logits", "probabilities")
DATATYPE = "FP32"


def bad(where: str, message: str, status: int = 400) -> InputError:
    return InputError(where, message, status=status)


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    id: str | None
    x: np.ndarray
    outputs: list[RequestedOutput] = field(default_factory=list)


def output_names(task: str) -> tuple[str, ...]:
    """A regression model's outputs are its targets' values: no probabilities."""
    return ("logits",) if task == "regression" else OUTPUTS


def model_metadata(model_id: str, meta: dict[str, Any], platform: str) -> dict[str, Any]:
    c, h, w = (int(v) for v in meta["input"]["shape"])
    classes = len(meta["classes"])
    return {
        "name": model_id,
        "versions": [MODEL_VERSION],
        "platform": platform,
        "inputs": [
            {
                "name": meta["input"].get("name", "input"),
                "datatype": DATATYPE,
                "shape": [-1, c, h, w],
            }
        ],
        "outputs": [
            {"name": name, "datatype": DATATYPE, "shape": [-1, classes]}
            for name in output_names(meta.get("task", "classification"))
        ],
        "parameters": {
            "task": meta.get("task", "classification"),
            "classes": [str(c) for c in meta["classes"]],
            "scale": meta["input"].get("scale", 1.0),
        },
    }


def parse_infer(
    body: bytes, header_length: str | None, *, model: LoadedModel, limits: Limits
) -> InferRequest:
    """An infer request for `model`; InputError (400/413) says what is wrong with it."""
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise bad("header.Inference-Header-Content-Length", "is not a number") from None
        if not 0 < size <= len(body):
            raise bad(
                "header.Inference-Header-Content-Length",
                f"is {size} but the body has {len(body)} bytes",
            )
        body, binary = body[:size], body[size:]
    request = json_object(body, expected=" with `inputs`", status=400)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("id", "must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("inputs", "must be a list with one tensor")
    input_name = model.meta["input"].get("name", "input")
    if len(inputs) != 1:
        raise bad("inputs", f"has {len(inputs)} tensors; the model takes one, {input_name!r}")
    x = _tensor(inputs[0], binary, input_name=input_name, model=model, limits=limits)
    return InferRequest(request_id, x, _outputs(request, output_names(model.task)))


def _tensor(
    spec: Any, binary: bytes, *, input_name: str, model: LoadedModel, limits: Limits
) -> np.ndarray:
    where = "inputs[0]"
    if not isinstance(spec, dict):
        raise bad(where, "must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if name != input_name:
        raise bad(f"{where}.name", f"is {name!r}; the model's input is {input_name!r}")
    datatype = spec.get("datatype")
    if datatype != DATATYPE:
        raise bad(f"{where}.datatype", f"is {datatype!r}; the model takes {DATATYPE}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
    ):
        raise bad(f"{where}.shape", f"must be a list of non-negative integers, got {shape!r}")
    c, h, w = model.input_shape
    if len(shape) != 4 or shape[1:] != [c, h, w]:
        raise bad(f"{where}.shape", f"is {shape}; the model takes [N, {c}, {h}, {w}]")
    if shape[0] == 0:
        raise bad(f"{where}.shape", "has a batch of 0; send at least one image")
    if shape[0] > limits.max_batch:
        raise bad(
            f"{where}.shape",
            f"has a batch of {shape[0]}; at most {limits.max_batch} per request",
            status=413,
        )
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad(f"{where}.parameters", "must be an object")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in spec:
            raise bad(where, "has both `data` and `parameters.binary_data_size`")
        expected = math.prod(shape) * 4
        if not isinstance(size, int) or isinstance(size, bool) or size != expected:
            raise bad(
                f"{where}.parameters.binary_data_size",
                f"is {size!r}; FP32 {shape} takes {expected} bytes",
            )
        if len(binary) != size:
            raise bad(
                "body", f"carries {len(binary)} bytes of binary tensor data; {size} were declared"
            )
        x = np.frombuffer(binary, dtype="<f4").astype(np.float32).reshape(shape)
        if not np.isfinite(x).all():
            raise bad(where, "holds NaN or infinite values")
    else:
        if binary:
            raise bad("body", "has binary data after the JSON header but no input declares it")
        if "data" not in spec:
            raise bad(f"{where}.data", "is missing")
        try:
            x = flat_array(spec["data"], shape, field=f"{where}.data")
        except InputError as exc:
            raise bad(exc.field, exc.message) from None
    return conform(x, field=where, shape=model.input_shape, limits=limits, strict=True)


def _outputs(request: dict[str, Any], names: tuple[str, ...] = OUTPUTS) -> list[RequestedOutput]:
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad("parameters", "must be an object")
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise bad("parameters.binary_data_output", "must be true or false")
    requested = request.get("outputs")
    if requested is None:
        return [RequestedOutput(name, default_binary) for name in names]
    if not isinstance(requested, list) or not requested:
        raise bad("outputs", "must be a non-empty list of {name} objects")
    out: list[RequestedOutput] = []
    for i, item in enumerate(requested):
        where = f"outputs[{i}]"
        if not isinstance(item, dict):
            raise bad(where, "must be an object with a name")
        name = item.get("name")
        if name not in names:
            raise bad(f"{where}.name", f"is {name!r}; outputs are {', '.join(names)}")
        if any(o.name == name for o in out):
            raise bad(f"{where}.name", f"{name!r} is requested twice")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad(f"{where}.parameters", "must be an object")
        if "classification" in params:
            raise bad(f"{where}.parameters.classification", "is not supported")
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise bad(f"{where}.parameters.binary_data", "must be true or false")
        out.append(RequestedOutput(name, binary))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def encode_infer(
    request: InferRequest, *, model_id: str, logits: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (Inference-Header-Content-Length when any
    output is binary)."""
    tensors = {"logits": logits.astype(np.float32, copy=False)}
    if any(o.name == "probabilities" for o in request.outputs):
        tensors["probabilities"] = softmax(logits).astype(np.float32)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for requested in request.outputs:
        tensor = tensors[requested.name]
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": DATATYPE,
            "shape": list(tensor.shape),
        }
        if requested.binary:
            blob = tensor.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.ravel().tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_id, "model_version": MODEL_VERSION}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = outputs
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
