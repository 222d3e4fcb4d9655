"""The suite's fixtures and hooks, one plugin module per concern (``tests/fixtures/``); helpers the tests import
are in ``tests/helpers.py``.

Fixture names mean one thing in every test file: ``clients`` is a ClientFactory inside a fresh function-scoped moto
mock; ``module_clients`` is one ClientFactory inside one moto mock for a whole module (``module_moto`` is that
mock, for ``reset()``), for files where making boto3 clients per test is the slow part; ``fake_clock`` is a
:class:`tests.helpers.FakeClock`.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

pytest_plugins = [
    "tests.fixtures.aws",  # moto in-process and moto's server, the fake AWS environment, no_aws
    "tests.fixtures.prefect",  # the session's Prefect server (prefect_harness)
    "tests.fixtures.local",  # a folder per test, the fake clock, local files, chromium
    "tests.fixtures.tiers",  # the e2e tier: marks and the check that a test starting processes is marked
    "tests.fixtures.iam_calls",  # the IAM contract's record of the kinds' AWS calls (tests/test_iam_contract.py)
    "tests.fixtures.session",  # xdist groups, the progress line, the fault-injection summary
]
