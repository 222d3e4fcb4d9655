"""How this project's processes talk to the Prefect API: Prefect's own client retries, with defaults for many
runs at once against one server, and the local SQLite server's settings that keep writers from giving up.

Prefect's client already retries 408, 429, 502 and 503 answers and dropped connections (once it has connected),
with an exponential back-off (2, 4, 8 ... s) and jitter. Its defaults (5 retries, jitter 0.2) give up after about
a minute, which a busy SQLite server outlasts when many runs start together; ours wait up to about four minutes,
and spread the retries wider. A value the user set (environment or profile) always wins.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: Prefect's client settings for our CLI, suite and demo processes, where the user set none
CLIENT_RETRIES: dict[str, str] = {
    "PREFECT_CLIENT_MAX_RETRIES": "7",  # back-off 2 + 4 + ... + 128 s: about 4 minutes before giving up
    "PREFECT_CLIENT_RETRY_JITTER_FACTOR": "0.5",  # runs started together do not retry together
}
#: the local server on SQLite: a writer waits this long for the database before `database is locked`
SQLITE_SERVER: dict[str, str] = {
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
}


def _unset_client_settings() -> dict[str, str]:
    from prefect.settings import get_current_settings

    chosen = get_current_settings().client.model_fields_set
    field = {"PREFECT_CLIENT_MAX_RETRIES": "max_retries", "PREFECT_CLIENT_RETRY_JITTER_FACTOR": "retry_jitter_factor"}
    return {name: value for name, value in CLIENT_RETRIES.items() if field[name] not in chosen}


@contextmanager
def client_retries() -> Iterator[dict[str, str]]:
    """Within this block, Prefect's client retries as :data:`CLIENT_RETRIES` says, for each setting the user
    left unset; yields the settings applied."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_CLIENT_RETRY_JITTER_FACTOR, temporary_settings

    settings = {"PREFECT_CLIENT_MAX_RETRIES": PREFECT_CLIENT_MAX_RETRIES,
                "PREFECT_CLIENT_RETRY_JITTER_FACTOR": PREFECT_CLIENT_RETRY_JITTER_FACTOR}
    applied = _unset_client_settings()
    with temporary_settings({settings[name]: value for name, value in applied.items()}):
        yield applied
