"""Serving finished students: model cache, dynamic batcher, backends, input decoding, OIP.

Serving needs the shared core (the architecture registry, app.core.network) or ONNX
Runtime, never training code, and never unpickles: weights come from safetensors or the
ONNX graph.
"""
