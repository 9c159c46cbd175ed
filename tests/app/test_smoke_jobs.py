"""A first check of the job routes on both backends (the full suite is in test_jobs_api)."""

from __future__ import annotations


def test_create_and_get_job(client, alice, tiny_spec):
    r = client.post("/api/v1/jobs", json=tiny_spec, headers=alice)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] == "QUEUED"
    assert job["spec"]["train"]["epochs"] == 2
    assert job["spec"]["evaluate"]["dataset"]["split"] == "test"
    r = client.get(f"/api/v1/jobs/{job['id']}", headers=alice)
    assert r.status_code == 200
    assert r.json()["id"] == job["id"]
