"""Who may predict: the remembered lookups of app/serving/access.py, against the real
database. Concurrent misses share one query; a remembered model whose folder is gone
(deleted through another process on the same store) answers 404 at once."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from app.config import get_settings
from app.db import get_write_sessionmaker
from app.models import TrainedModel
from app.services.errors import NotFoundError
from app.serving import access
from app.serving.lookup import LookupCache
from tests.app.serving import factory
from tests.app.serving.factory import install_model

student_folder = factory.student_folder


@pytest.fixture
def queries(monkeypatch) -> list[str]:
    """Each database lookup the prediction routes make (the real one, counted)."""
    made: list[str] = []
    real = access.lookup

    def counted(authorization: str, **kwargs):
        made.append(kwargs["model_id"])
        return real(authorization, **kwargs)

    monkeypatch.setattr(access, "lookup", counted)
    return made


def test_concurrent_misses_share_one_query(client, alice, student_folder, queries):
    model_id = install_model(student_folder, owner="alice")
    lookups = LookupCache(ttl_seconds=60)
    artifact_dir = get_settings().artifact_dir

    async def burst() -> list[tuple[str, object]]:
        return await asyncio.gather(
            *(
                access.authorized_ref(
                    lookups, alice["Authorization"], model_id=model_id, artifact_dir=artifact_dir
                )
                for _ in range(20)
            )
        )

    answers = asyncio.run(burst())
    assert queries == [model_id]
    assert {owner for owner, _ in answers} == {"alice"}
    assert not lookups.pending
    asyncio.run(burst())  # remembered now: no query at all
    assert queries == [model_id]


def test_refusals_are_shared_but_never_remembered(client, alice, queries):
    lookups = LookupCache(ttl_seconds=60)

    async def burst() -> list[object]:
        return await asyncio.gather(
            *(
                access.authorized_ref(
                    lookups,
                    alice["Authorization"],
                    model_id="missing",
                    artifact_dir=get_settings().artifact_dir,
                )
                for _ in range(5)
            ),
            return_exceptions=True,
        )

    assert all(isinstance(e, NotFoundError) for e in asyncio.run(burst()))
    assert all(isinstance(e, NotFoundError) for e in asyncio.run(burst()))
    assert queries == ["missing", "missing"]


def test_a_model_deleted_by_another_process_stops_at_once(client, alice, student_folder):
    model_id = install_model(student_folder, owner="alice")
    url = f"/api/v1/models/{model_id}/predict"
    body = {"inputs": [[[0.0] * 8] * 8]}
    assert client.post(url, json=body, headers=alice).status_code == 200
    server = client.app.state.model_server
    assert server.is_loaded(model_id)
    # What DELETE does in another process: the row, then the folder. This process's
    # remembered lookup and loaded model are untouched by it.
    settings = get_settings()
    with get_write_sessionmaker()() as session:
        session.delete(session.get(TrainedModel, model_id))
        session.commit()
    shutil.rmtree(settings.artifact_dir / "models" / model_id)
    r = client.post(url, json=body, headers=alice)
    assert r.status_code == 404, r.text
    assert not server.is_loaded(model_id)
