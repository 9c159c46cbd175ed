"""The shared core: what the API and the worker both need, and nothing else.

- `registry`: one registry type (unknown names suggest close ones);
- `archs`, `network`: the architecture registry and the served `Network`;
- `datasets`: the dataset catalog and the stored upload format;
- `images`: decoding and resizing pixels, one way for uploads, training and serving;
- `losses`: the distillation loss registry;
- `model_format`: a finished model's files (model.json fields, ONNX session setup);
- `job_states`: every transition of a job and the event it writes;
- `files`, `safe_json`, `devices`: atomic writes, strict JSON values, device choice.

Nothing here imports `app.api`, `app.services`, `app.serving` or `worker`
(tests/test_architecture.py checks).
"""
