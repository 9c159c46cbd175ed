"""Engine and sessions for SQLite (the embedded default) and Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

# SQLite waits this long for a competing writer instead of failing with "database is locked" (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """An engine with the pragmas and pool settings each backend needs."""
    # The pool can grow past FastAPI's thread pool (40 threads): a request holds its
    # connection until its dependencies are torn down, which needs a thread too; with fewer
    # connections than threads, a burst can leave every thread waiting for a connection.
    pool = {"pool_size": 10, "max_overflow": 45, "pool_timeout": 30}
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **pool,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Python's sqlite3 opens transactions lazily and never with BEGIN IMMEDIATE; take
        # control so that `get_write_engine` below can ask for the write lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL lets the API read while a worker writes; the busy timeout queues writers.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # `get_write_engine` below sets this option to take the write lock at BEGIN.
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request, for reads, closed afterwards."""
    with get_sessionmaker()() as session:
        yield session


def get_write_db() -> Iterator[Session]:
    """FastAPI dependency for requests that read then write (see `get_write_engine`)."""
    with get_write_sessionmaker()() as session:
        yield session


@lru_cache
def get_write_engine() -> Engine:
    """The engine for read-then-write transactions such as claiming a job.

    On SQLite its transactions start with BEGIN IMMEDIATE, which takes the write lock up
    front, so two workers cannot both read the same QUEUED row. On Postgres it is the plain
    engine: the claim there relies on `FOR UPDATE SKIP LOCKED`.
    """
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    return engine


@lru_cache
def get_write_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_write_engine(), expire_on_commit=False)


def reset_engines() -> None:
    """Forget cached engines (tests point the settings at another database)."""
    for cached in (get_write_sessionmaker, get_sessionmaker, get_write_engine):
        cached.cache_clear()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
