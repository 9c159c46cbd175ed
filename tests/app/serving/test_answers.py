"""The answer's top-k: the plain-Python path for few classes equals the numpy path."""

from __future__ import annotations

import numpy as np

from app.serving import predict as predictor


def test_few_class_and_many_class_paths_agree_ties_included(monkeypatch):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 12)).astype(np.float32)
    logits[1] = 0.0  # every class tied: class order decides
    logits[2, [3, 7]] = 5.0  # a tie at the top
    classes = [f"c{i}" for i in range(12)]
    for k in (1, 3, 12):
        small = predictor.predictions(logits, classes, k)
        monkeypatch.setattr(predictor, "SMALL_CLASS_COUNT", 0)
        numpy_path = predictor.predictions(logits, classes, k)
        monkeypatch.undo()
        assert small == numpy_path
    answer = predictor.predictions(logits, classes, 2)["predictions"]
    assert [e["label"] for e in answer[1]["top_k"]] == ["c0", "c1"]
    assert [e["label"] for e in answer[2]["top_k"]] == ["c3", "c7"]
    assert answer[0]["score"] == max(e["score"] for e in answer[0]["top_k"])
