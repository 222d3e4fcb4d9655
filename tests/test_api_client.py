"""Prefect's client, with our defaults (flows.run.prefect_client), retries an API that answers 503 or 429 or drops the
connection, and gives up only after our number of retries; a value the user set wins. The API is an httpx mock
transport, and Prefect's back-off sleeps are recorded instead of slept."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

from flows.run.prefect_client import CLIENT_RETRIES, client_retries


class FlakyApi:
    """Fails the first ``failures`` calls (each a status code, or an exception), then answers 200."""

    def __init__(self, failures: list[int | type[Exception]]) -> None:
        self.failures, self.calls = list(failures), 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            return httpx.Response(200, json="ok")  # the first call connects (Prefect retries drops after that)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, int):
                return httpx.Response(failure, json={"detail": "busy"})
            raise failure("connection dropped", request=request)
        return httpx.Response(200, json="ok")


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    import prefect.client.base as base

    monkeypatch.setattr(base, "anyio", types.SimpleNamespace(**{**vars(base.anyio), "sleep": sleep}))
    return delays


def call_twice(api: FlakyApi) -> list[int]:
    async def go() -> list[int]:
        async with PrefectClient("http://prefect.test/api", httpx_settings={"transport": httpx.MockTransport(api)},
                                 ) as client:
            codes = []
            for _ in range(2):
                response: Any = await client._client.get("/health")
                codes.append(response.status_code)
            return codes

    return asyncio.run(go())


def test_503_429_and_dropped_connections_are_retried_past_prefects_default(slept: list[float]) -> None:
    # Prefect's default gives up after 5 retries; ours retries 7 times
    api = FlakyApi([503, 429, 503, httpx.ReadError, 503, 503, 503])
    with client_retries() as applied:
        assert applied == CLIENT_RETRIES
        assert call_twice(api) == [200, 200]
    assert api.calls == 1 + 7 + 1
    assert len(slept) == 7 and max(slept) > 16  # exponential back-off, with jitter


def test_gives_up_after_our_retries_with_the_last_answer(slept: list[float]) -> None:
    api = FlakyApi([503] * 9)
    with client_retries(), pytest.raises(httpx.HTTPStatusError) as raised:
        call_twice(api)
    assert raised.value.response.status_code == 503
    assert api.calls == 1 + 8  # one try and 7 retries


def test_a_value_the_user_set_wins(slept: list[float]) -> None:
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 1}):
        with client_retries() as applied:
            assert "PREFECT_CLIENT_MAX_RETRIES" not in applied
            assert get_current_settings().client.max_retries == 1
            with pytest.raises(httpx.HTTPStatusError):
                call_twice(FlakyApi([503, 503]))
    assert get_current_settings().client.max_retries != int(CLIENT_RETRIES["PREFECT_CLIENT_MAX_RETRIES"])
