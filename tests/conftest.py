from __future__ import annotations

import gc
import os
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from qdrant_client import QdrantClient, models

from chaos.servers import ChromaServer, PostgresServer, RedisServer

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _let_qdrant_local_probe_sqlite_once() -> None:
    """qdrant-client's local mode, the first time a process opens a collection on disk,
    asks SQLite for its threading mode on a connection it does not close. From Python
    3.13 the collected connection warns, and this suite's warnings-are-errors would fail
    whichever test the collection happens to fall in; so the probe is made here, once,
    with that warning expected. Any other unclosed connection still fails its test."""
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = QdrantClient(path=directory)
        try:
            client.create_collection(
                "probe", vectors_config=models.VectorParams(size=1, distance=models.Distance.COSINE)
            )
        finally:
            client.close()
        gc.collect()  # the connection sits in a reference cycle: collect it now


if sys.version_info >= (3, 13):  # earlier Pythons do not warn on unclosed connections
    _let_qdrant_local_probe_sqlite_once()

# LangChain's standard tests run in an environment of their own (make langchain-standard).
collect_ignore = ["langchain_standard"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A private ``chroma run`` for the whole session (tests use their own collections)."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL for the session; tests take a fresh database each."""
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"t{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
