"""/api/v1/models on both databases: list, get, artifacts, delete, owners, eviction.

Models come from a real train job (one per session, see tests/app/serving/factory.py),
installed per test as the worker installs them; one test runs the whole path from job
to prediction.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import load as load_safetensors

from tests.app.serving import factory
from tests.app.serving.factory import install_model

# Session fixtures shared with the other serving tests.
student_folder = factory.student_folder
colour_folder = factory.colour_folder

PROBLEM = "application/problem+json"


def assert_problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


def metric(client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_a_finished_job_is_listed_fetched_downloaded_and_served(client, alice, tiny_spec):
    from app.config import get_settings
    from worker.main import Worker

    job = client.post("/api/v1/jobs", json=tiny_spec, headers=alice).json()
    Worker(get_settings(), device="cpu").run(max_jobs=1)
    job = client.get(f"/api/v1/jobs/{job['id']}", headers=alice).json()
    assert job["state"] == "SUCCEEDED", job
    model_id = job["model_id"]

    listed = client.get("/api/v1/models", headers=alice).json()
    assert [m["id"] for m in listed["models"]] == [model_id]
    assert listed["next_page_token"] is None

    r = client.get(f"/api/v1/models/{model_id}", headers=alice)
    assert r.status_code == 200
    model = r.json()
    assert model["arch"] == "small_cnn" and model["job_id"] == job["id"]
    assert model["classes"] == ["0", "1", "2"] and model["num_classes"] == 3
    assert model["input"]["shape"] == [1, 8, 8] and model["input"]["scale"] == 1.0
    assert len(model["normalization"]["mean"]) == 1
    assert "accuracy" in model["metrics"]
    assert model["files"] == ["model.safetensors", "model.json", "model.onnx"]
    assert model["serving_backend"] in ("torch", "onnx")
    assert model["backends"]["preferred"] in ("torch", "onnx")
    assert model["loaded"] is False
    assert model["created_at"]

    x = np.random.default_rng(0).random((2, 1, 8, 8)).tolist()
    r = client.post(f"/api/v1/models/{model_id}/predict", json={"inputs": x}, headers=alice)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    assert client.get(f"/api/v1/models/{model_id}", headers=alice).json()["loaded"] is True


def test_artifacts_download_and_load_without_pickle(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    base = f"/api/v1/models/{model_id}/artifacts"

    r = client.get(f"{base}/model.json", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    meta = r.json()
    assert meta["id"] == model_id and meta["classes"] == ["0", "1", "2"]

    r = client.get(f"{base}/model.safetensors", headers=alice)
    assert r.status_code == 200
    assert "model.safetensors" in r.headers["content-disposition"]
    weights = load_safetensors(r.content)
    assert any(k.startswith("backbone.") for k in weights)

    r = client.get(f"{base}/model.onnx", headers=alice)
    assert r.status_code == 200
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]

    body = assert_problem(client.get(f"{base}/model.pt", headers=alice), 404)
    assert "model.onnx" in body["detail"]  # lists the artifacts there are
    assert_problem(client.get(f"{base}/..%2Fmodel.json", headers=alice), 404)


def test_a_model_without_onnx_says_why(client, alice, student_folder, settings):
    model_id = install_model(student_folder, owner="alice")
    folder = settings.artifact_dir / "models" / model_id
    (folder / "model.onnx").unlink()
    body = assert_problem(
        client.get(f"/api/v1/models/{model_id}/artifacts/model.onnx", headers=alice), 404
    )
    assert "model.onnx" in body["detail"]


def test_list_pages_newest_first(client, alice, student_folder):
    ids = [install_model(student_folder, owner="alice") for _ in range(3)]
    first = client.get("/api/v1/models?page_size=2", headers=alice).json()
    assert len(first["models"]) == 2 and first["next_page_token"]
    second = client.get(
        f"/api/v1/models?page_size=2&page_token={first['next_page_token']}", headers=alice
    ).json()
    assert second["next_page_token"] is None
    seen = [m["id"] for m in first["models"] + second["models"]]
    assert seen == list(reversed(ids))
    assert_problem(client.get("/api/v1/models?page_token=nonsense", headers=alice), 422)
    assert_problem(client.get("/api/v1/models?page_size=0", headers=alice), 422)


def test_another_owners_model_is_invisible(client, alice, bob, student_folder):
    model_id = install_model(student_folder, owner="alice")
    assert client.get("/api/v1/models", headers=bob).json()["models"] == []
    base = f"/api/v1/models/{model_id}"
    assert_problem(client.get(base, headers=bob), 404)
    assert_problem(client.get(f"{base}/artifacts/model.json", headers=bob), 404)
    x = {"inputs": [[[0.0] * 8] * 8]}
    assert_problem(client.post(f"{base}/predict", json=x, headers=bob), 404)
    assert_problem(client.delete(base, headers=bob), 404)
    # Bob's attempts changed nothing for alice.
    assert client.get(base, headers=alice).status_code == 200
    assert client.post(f"{base}/predict", json=x, headers=alice).status_code == 200


def test_the_api_needs_a_key(client, student_folder):
    model_id = install_model(student_folder, owner="alice")
    assert_problem(client.get("/api/v1/models"), 401)
    assert_problem(client.get(f"/api/v1/models/{model_id}"), 401)
    assert_problem(
        client.post(f"/api/v1/models/{model_id}/predict", json={"inputs": [[[0.0]]]}), 401
    )
    assert_problem(client.get("/api/v1/models", headers={"Authorization": "Bearer nope"}), 401)


def test_delete_frees_artifacts_and_memory(client, alice, student_folder, settings):
    model_id = install_model(student_folder, owner="alice")
    keep = install_model(student_folder, owner="alice")
    folder = settings.artifact_dir / "models" / model_id
    x = {"inputs": [[[0.5] * 8] * 8]}
    assert (
        client.post(f"/api/v1/models/{model_id}/predict", json=x, headers=alice).status_code == 200
    )
    server = client.app.state.model_server
    assert server.is_loaded(model_id)

    r = client.delete(f"/api/v1/models/{model_id}", headers=alice)
    assert r.status_code == 204 and r.content == b""
    assert not folder.exists()
    assert not server.is_loaded(model_id)
    assert_problem(client.get(f"/api/v1/models/{model_id}", headers=alice), 404)
    assert_problem(client.post(f"/api/v1/models/{model_id}/predict", json=x, headers=alice), 404)
    assert_problem(client.delete(f"/api/v1/models/{model_id}", headers=alice), 404)
    # Nothing else went with it.
    assert (settings.artifact_dir / "models" / keep / "model.json").is_file()
    assert [m["id"] for m in client.get("/api/v1/models", headers=alice).json()["models"]] == [keep]


@pytest.fixture
def one_model_cache(env, monkeypatch):
    monkeypatch.setenv("STILLHOUSE_CACHE_MAX_MODELS", "1")
    from app.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_cache_evicts_the_least_recently_used_and_reloads_it(
    one_model_cache, client, alice, student_folder, colour_folder
):
    grey = install_model(student_folder, owner="alice")
    colour = install_model(colour_folder, owner="alice")
    server = client.app.state.model_server
    assert server.cache.max_models == 1
    x = {"inputs": [[[0.5] * 8] * 8]}

    def predict(model_id: str) -> dict:
        r = client.post(f"/api/v1/models/{model_id}/predict", json=x, headers=alice)
        assert r.status_code == 200, r.text
        return r.json()

    first = predict(grey)
    predict(colour)
    assert not server.is_loaded(grey) and server.is_loaded(colour)
    assert metric(client, "stillhouse_model_cache_evictions_total", model=grey) == 1
    assert predict(grey) == first  # reloaded, same answers
    assert metric(client, "stillhouse_model_cache_misses_total", model=grey) == 2
    assert metric(client, "stillhouse_model_cache_evictions_total", model=colour) == 1
    predict(grey)
    assert metric(client, "stillhouse_model_cache_hits_total", model=grey) >= 1


def test_serving_metrics_are_exported_per_model(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    x = {"inputs": np.zeros((3, 8, 8)).tolist()}
    for _ in range(2):
        r = client.post(f"/api/v1/models/{model_id}/predict", json=x, headers=alice)
        assert r.status_code == 200
    assert (
        metric(client, "stillhouse_predict_duration_seconds_count", model=model_id, api="v1") == 2
    )
    assert metric(client, "stillhouse_batch_size_sum", model=model_id) == 6
    assert metric(client, "stillhouse_model_cache_misses_total", model=model_id) == 1
    assert metric(client, "stillhouse_model_cache_hits_total", model=model_id) == 1
    assert metric(client, "stillhouse_forward_duration_seconds_count", model=model_id) == 2
    assert metric(client, "stillhouse_model_cache_models") >= 1
    # A deleted model's series go with it.
    client.delete(f"/api/v1/models/{model_id}", headers=alice)
    assert metric(client, "stillhouse_batch_size_sum", model=model_id) == 0


def test_missing_artifacts_answer_503_not_500(client, alice, student_folder, settings):
    model_id = install_model(student_folder, owner="alice")
    folder = settings.artifact_dir / "models" / model_id
    for name in ("model.onnx", "model.safetensors"):
        (folder / name).unlink()
    r = client.post(
        f"/api/v1/models/{model_id}/predict", json={"inputs": [[[0.0] * 8] * 8]}, headers=alice
    )
    body = assert_problem(r, 503)
    assert "model.safetensors" in body["detail"]
    # The metadata still answers; delete still cleans up.
    assert client.get(f"/api/v1/models/{model_id}", headers=alice).status_code == 200
    assert client.delete(f"/api/v1/models/{model_id}", headers=alice).status_code == 204


def test_model_json_matches_the_row(client, alice, student_folder, settings):
    model_id = install_model(student_folder, owner="alice")
    on_disk = json.loads((settings.artifact_dir / "models" / model_id / "model.json").read_text())
    served = client.get(f"/api/v1/models/{model_id}", headers=alice).json()
    assert served["classes"] == on_disk["classes"]
    assert served["input"] == on_disk["input"]
    assert served["backends"] == on_disk["backends"]


def test_a_model_an_unfinished_job_starts_from_cannot_be_deleted(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    spec = {
        "kind": "finetune",
        "model": {"source": "model", "model_id": model_id, "arch": "small_cnn"},
        "finetune": {"dataset": {"name": "digits", "classes": [0, 1]}, "epochs": 1, "min_steps": 0},
    }
    r = client.post("/api/v1/jobs", json=spec, headers=alice)
    assert r.status_code == 201, r.text
    body = assert_problem(client.delete(f"/api/v1/models/{model_id}", headers=alice), 409)
    assert r.json()["id"] in body["detail"]
    assert client.post(f"/api/v1/jobs/{r.json()['id']}:cancel", headers=alice).status_code == 202
    assert client.delete(f"/api/v1/models/{model_id}", headers=alice).status_code == 204
