"""The own moto tests of the test-only kind ``expect_bucket_versioning`` (tests/kinds/bucket_versioning.py).

Run only by ``tests/test_step_kind_extension.py``, in a child pytest with ``PIPELINE_TEST_STEP_MODULES`` set and
every AWS call recorded (``-p tests.fixtures.iam_calls``), as ``tests/test_iam_contract.py`` runs the product's kinds' tests:
each call the runner makes must be one its footprint declares. Not named ``test_*.py``, so the suite never collects
it: importing the kind in the suite's own processes would add it to their registry.
"""

from __future__ import annotations

import pytest

import flows.spec.model  # noqa: F401  (imports the step modules, PIPELINE_TEST_STEP_MODULES's too)
from tasks.kit.aws import ClientFactory
from tasks.kit.errors import CheckFailed, StepError
from tasks.kit.step import REGISTRY, StepContext, StepOutcome

KIND = "expect_bucket_versioning"
if KIND not in REGISTRY:
    pytest.skip("run with PIPELINE_TEST_STEP_MODULES=tests.kinds.bucket_versioning", allow_module_level=True)


def run(clients: ClientFactory, bucket: str, status: str = "Enabled") -> StepOutcome:
    step = REGISTRY[KIND].model.model_validate({"kind": KIND, "bucket": bucket, "status": status})
    return REGISTRY[KIND].run(step, StepContext(clients=clients, case_name="case", run_id="run-1", label="versioned"))


def test_the_kind_keeps_the_contract_of_every_kind() -> None:
    """tests/test_contract.py's rules on the model: the kind literal is its registry key, every field described."""
    model = REGISTRY[KIND].model
    assert model.model_fields["kind"].default == KIND and (model.__doc__ or "").strip()
    assert all((info.description or "").strip() for name, info in model.model_fields.items() if name != "kind")


def test_the_state_asked_for_holds(clients: ClientFactory) -> None:
    s3 = clients.client("s3")
    s3.create_bucket(Bucket="versioned")
    s3.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Suspended"})
    outcome = run(clients, "versioned", "Suspended")
    assert outcome.summary == "S3 bucket versioned: versioning Suspended"
    assert outcome.details == {"bucket": "versioned", "expected": "Suspended", "found": "Suspended"}
    assert [(c.name, c.expected, c.actual, c.verdict) for c in outcome.checks] == [
        ("versioning", "Suspended", "Suspended", "passed")]


def test_a_bucket_never_versioned_fails_the_check(clients: ClientFactory) -> None:
    clients.client("s3").create_bucket(Bucket="plain")
    with pytest.raises(CheckFailed, match="versioning is never enabled, expected Enabled") as caught:
        run(clients, "plain")
    assert caught.value.markdown and "❌" in caught.value.markdown
    assert [(c.actual, c.verdict) for c in caught.value.checks] == [("never enabled", "failed")]


def test_a_missing_bucket_is_an_error_with_awss_code(clients: ClientFactory) -> None:
    with pytest.raises(StepError) as caught:
        run(clients, "no-such-bucket")
    assert not isinstance(caught.value, CheckFailed)
    assert caught.value.code == "NoSuchBucket" and "bucket no-such-bucket" in caught.value.message
