"""How this project's processes talk to the Prefect API: Prefect's own client retries, with defaults for many
runs at once against one server, and the local SQLite server's settings that keep writers from giving up.

Prefect's client already retries 408, 429, 502 and 503 answers and dropped connections (once it has connected),
with an exponential back-off (2, 4, 8 ... s) and jitter. Its defaults (5 retries, jitter 0.2) give up after about
a minute, which a busy SQLite server outlasts when many runs start together; ours wait up to about four minutes,
and spread the retries wider. A value the user set (environment or profile) always wins.

How many cases of a suite one server holds at once (:func:`server_capacity`, :func:`bound_parallel`): by its
connection pool, which the server tells, and its database, which it does not (SQLite unless known otherwise).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

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


#: what a Prefect server's database holds at once when the server cannot say (Prefect's pool: 5 + overflow 10)
DEFAULT_CONNECTIONS = 15
#: cases at once on a SQLite server: as fast as 20 at once in docs/running.md's measurements, without their stalls
SQLITE_MAX_PARALLEL = 4


@dataclass(frozen=True)
class ServerCapacity:
    """How many cases of a suite one Prefect server holds at once, from its database and its connection pool.

    A running case has about one request at a time on its own path (its task runs, locks, state changes) and one
    from its evidence thread (artifacts), besides the batched logs and events. On PostgreSQL, requests run side by
    side: a case per connection of the server's pool. On SQLite, every write waits for the one writer: more cases
    at once do not go faster, they queue, and a queue of writers is what stalls that server (`database is locked`
    after its database timeout; seen with 7 cases at once, 2026-12-08): at most :data:`SQLITE_MAX_PARALLEL`."""

    database: str  # "sqlite", "postgresql"
    connections: int  # the server's pool: pool_size + max_overflow
    source: str  # how the database was known, for the log line

    @property
    def max_parallel(self) -> int:
        if self.database == "postgresql":
            return max(1, self.connections)
        return max(1, min(SQLITE_MAX_PARALLEL, self.connections // 2))


def database_of(url: str | None) -> str:
    """``sqlite`` or ``postgresql`` from a SQLAlchemy connection URL (no URL: Prefect's default, SQLite)."""
    return "postgresql" if url and url.strip().lower().startswith("postgres") else "sqlite"


def server_capacity(api_url: str | None, get: Callable[[str], Any] | None = None) -> ServerCapacity:
    """What the Prefect server at ``api_url`` holds (no URL: this process's temporary server, on SQLite).

    The pool size comes from the server (``GET /admin/settings``); its database from the server's ``driver``
    setting when it has one, else from this process's ``PREFECT_API_DATABASE_CONNECTION_URL`` (the profile that
    starts a local server holds it), else SQLite, Prefect's default (the cautious answer). Never raises."""
    from prefect.settings import get_current_settings

    own = get_current_settings().server.database
    url = own.connection_url.get_secret_value() if "connection_url" in own.model_fields_set and \
        own.connection_url is not None else None
    database, source = database_of(url), ("this process's PREFECT_API_DATABASE_CONNECTION_URL" if url
                                          else "Prefect's default (no PREFECT_API_DATABASE_CONNECTION_URL here)")
    if not api_url:
        return ServerCapacity(database, own.sqlalchemy.pool_size + own.sqlalchemy.max_overflow,
                              "this process's temporary server")
    connections = DEFAULT_CONNECTIONS
    try:
        import httpx

        response = (get or (lambda u: httpx.get(u, timeout=10)))(f"{api_url.rstrip('/')}/admin/settings")
        response.raise_for_status()
        server = response.json()["server"]["database"]
        connections = int(server["sqlalchemy"]["pool_size"]) + int(server["sqlalchemy"]["max_overflow"])
        if server.get("driver"):
            database, source = database_of(server["driver"]), "the server's PREFECT_SERVER_DATABASE_DRIVER"
    except Exception:
        pass
    return ServerCapacity(database, connections, source)


def bound_parallel(asked: int | None, capacity: ServerCapacity, logger: Any) -> int:
    """The cases a suite runs at once: what was asked (``max_parallel``), at most what the server holds; none
    asked: what the server holds. Logs the cap when it cuts what was asked."""
    cap = capacity.max_parallel
    if asked is None:
        return cap
    if asked > cap:
        logger.warning("max_parallel %d is more than the Prefect server holds: %d case(s) at once (its database: "
                       "%s, known from %s; its connection pool: %d); running %d at once", asked, cap,
                       capacity.database, capacity.source, capacity.connections, cap)
        return cap
    return asked
