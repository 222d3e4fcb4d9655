"""Masking, sensitive JSON paths and redaction (tasks/secrets.py)."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from tasks.secrets import (
    MASK_KEY_ENV,
    RedactFilter,
    fingerprint,
    is_sensitive,
    mask,
    mask_any,
    mask_paths,
    parse_path,
    redact,
    redact_json,
    secrets_at,
)

CANARY = "canary-Secret-7f3a9c"


@pytest.fixture(autouse=True)
def _no_mask_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASK_KEY_ENV, raising=False)


def test_mask_shows_stars_and_a_short_sha256_prefix() -> None:
    expected = hashlib.sha256(CANARY.encode()).hexdigest()[:6]
    assert mask(CANARY) == f"****(sha256:{expected})"
    assert CANARY not in mask(CANARY)


def test_mask_differs_for_different_values_and_is_stable() -> None:
    assert mask("a") == mask("a")
    assert mask("a") != mask("b")


def test_mask_key_makes_an_hmac_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = fingerprint(CANARY)
    monkeypatch.setenv(MASK_KEY_ENV, "k1")
    keyed = fingerprint(CANARY)
    assert keyed.startswith("hmac:") and len(keyed) == len("hmac:") + 6
    assert keyed != plain
    monkeypatch.setenv(MASK_KEY_ENV, "k2")
    assert fingerprint(CANARY) != keyed


def test_mask_any_masks_non_strings_by_canonical_json() -> None:
    assert mask_any({"b": 1, "a": 2}) == mask_any({"a": 2, "b": 1})
    assert mask_any(1234) == mask("1234")


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("password", ["password"]),
        ("$.db.password", ["db", "password"]),
        ("$db", ["db"]),
        ("users[*].token", ["users", "*", "token"]),
        ("items[0].secret", ["items", 0, "secret"]),
        ("*.secret", ["*", "secret"]),
        ("a[1][2]", ["a", 1, 2]),
    ],
)
def test_parse_path(path: str, segments: list) -> None:
    assert parse_path(path) == segments


@pytest.mark.parametrize("path", ["", "$", "a..b", "a[x]", "a.", "a[1"])
def test_parse_path_rejects_malformed(path: str) -> None:
    with pytest.raises(ValueError):
        parse_path(path)


def test_mask_paths_masks_nested_lists_and_wildcards_without_changing_input() -> None:
    doc = {
        "user": "bob",
        "db": {"password": CANARY, "host": "h"},
        "users": [{"token": "t1", "id": 1}, {"token": "t2", "id": 2}],
        "vaults": {"a": {"secret": "s1"}, "b": {"secret": {"deep": "s2"}}},
    }
    original = json.loads(json.dumps(doc))
    masked = mask_paths(doc, ["db.password", "users[*].token", "*.a.secret", "vaults.*.secret", "missing.path"])
    assert doc == original
    assert masked["db"] == {"password": mask(CANARY), "host": "h"}
    assert [u["token"] for u in masked["users"]] == [mask("t1"), mask("t2")]
    assert masked["vaults"]["a"]["secret"] == mask("s1")
    assert masked["vaults"]["b"]["secret"] == mask_any({"deep": "s2"})
    assert masked["user"] == "bob"
    assert CANARY not in json.dumps(masked)


def test_mask_paths_on_scalars_and_index_out_of_range() -> None:
    assert mask_paths("text", ["a"]) == "text"
    assert mask_paths([1, 2], ["[5]"]) == [1, 2]
    assert mask_paths([1, "x"], ["[1]"]) == [1, mask("x")]


def test_secrets_at_collects_leaves_and_object_json() -> None:
    doc = {"creds": {"user": "u1", "pin": 4321, "admin": True}, "plain": "p"}
    found = secrets_at(doc, ["creds"])
    assert "u1" in found and "4321" in found
    assert "True" not in found and "true" not in found
    assert json.dumps(doc["creds"]) in found
    assert "p" not in found


def test_is_sensitive_matches_paths_under_a_pattern() -> None:
    patterns = [parse_path("db.password"), parse_path("users[*]")]
    assert is_sensitive(["db", "password"], patterns)
    assert is_sensitive(["users", 3, "name"], patterns)
    assert not is_sensitive(["db"], patterns)
    assert not is_sensitive(["db", "host"], patterns)


def test_redact_replaces_plain_and_json_escaped_occurrences() -> None:
    secret = 'p"w\\d-ü'
    text = f"raw {secret} json {json.dumps({'x': secret})} ascii {json.dumps(secret, ensure_ascii=False)}"
    out = redact(text, [secret])
    assert secret not in out
    assert json.dumps(secret)[1:-1] not in out
    assert out.count(mask(secret)) == 3


def test_redact_prefers_the_longest_secret_and_does_not_rescan_its_output() -> None:
    out = redact("token=abcdef and abc", ["abc", "abcdef", "", "a"])
    assert out == f"token={mask('abcdef')} {mask('a')}nd {mask('abc')}"


def test_redact_without_secrets_is_identity() -> None:
    assert redact("hello", []) == "hello"
    assert redact("", ["x"]) == ""


def test_redact_filter_masks_log_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.secrets.filter")
    filt = RedactFilter()
    filt.add(CANARY, "")
    logger.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("value is %s", CANARY)
            logger.info("nothing secret here: %d", 5)
    finally:
        logger.removeFilter(filt)
    assert CANARY not in caplog.text
    assert mask(CANARY) in caplog.text
    assert "nothing secret here: 5" in caplog.text


def test_mask_paths_with_overlapping_paths_masks_each_value_once() -> None:
    doc = {"creds": {"password": CANARY}}
    masked = mask_paths(doc, ["creds", "creds.password", "*.password"])
    assert masked == {"creds": mask_any({"password": CANARY})}
    assert mask_paths(doc, ["creds.password", "*.password"]) == {"creds": {"password": mask(CANARY)}}


def test_redact_json_masks_secrets_inside_strings_and_keys() -> None:
    doc = {"msg": f"token {CANARY} used", CANARY: [CANARY, 1, None], "n": 2}
    out = redact_json(doc, [CANARY])
    assert CANARY not in json.dumps(out)
    assert out["msg"] == f"token {mask(CANARY)} used" and out["n"] == 2
    assert redact_json(doc, []) is doc
