"""Serving finished students: model cache, dynamic batcher, backends, input decoding, OIP.

Serving needs the architecture registry (worker.nets) or ONNX Runtime, never training
code, and never unpickles: weights come from safetensors or the ONNX graph.
"""
