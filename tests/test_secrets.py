"""Masking, sensitive JSON paths and redaction (tasks/kit/secrets.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading

import pytest

from tasks.kit.secrets import (
    MASK_KEY_ENV,
    MIN_SECRET_CHARS,
    NAMES,
    RedactFilter,
    Secrets,
    fingerprint,
    is_sensitive,
    mask,
    mask_any,
    mask_document_text,
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


def test_without_a_key_a_mask_is_stars_only() -> None:
    assert fingerprint(CANARY) is None
    assert mask(CANARY) == "****" == mask("a")


def test_mask_with_a_key_differs_for_different_values_and_is_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASK_KEY_ENV, "k1")
    assert mask("a") == mask("a")
    assert mask("a") != mask("b")
    assert CANARY not in mask(CANARY)


def test_mask_key_makes_an_hmac_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASK_KEY_ENV, "k1")
    keyed = fingerprint(CANARY)
    assert keyed.startswith("hmac:") and len(keyed) == len("hmac:") + 6
    assert mask(CANARY) == f"****({keyed})"
    monkeypatch.setenv(MASK_KEY_ENV, "k2")
    assert fingerprint(CANARY) != keyed


def test_a_pin_fingerprint_cannot_be_matched_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unkeyed sha256(pin)[:6] of a 6-digit PIN was reversed in a second; a keyed one cannot be."""
    pin = "123456"
    assert pin not in mask(pin) and hashlib.sha256(pin.encode()).hexdigest()[:6] not in mask(pin)
    key = "kept-by-the-user-" + "x" * 16
    monkeypatch.setenv(MASK_KEY_ENV, key)
    shown = fingerprint(pin).removeprefix("hmac:")
    assert shown != hashlib.sha256(pin.encode()).hexdigest()[:6]
    assert shown == hmac.new(key.encode(), pin.encode(), hashlib.sha256).hexdigest()[:6]  # the key matches it
    # an attacker without the key: the same brute force over every PIN, unkeyed or with a wrong key, finds
    # nothing reliable (a 24-bit fingerprint may collide by chance: never on the PIN itself)
    for guess_key in (b"", b"wrong-key"):
        hits = {f"{n:06d}" for n in range(0, 1_000_000, 7)
                if (hmac.new(guess_key, f"{n:06d}".encode(), hashlib.sha256).hexdigest()[:6] if guess_key
                    else hashlib.sha256(f"{n:06d}".encode()).hexdigest()[:6]) == shown}
        assert pin not in hits


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
    secret = 'p"w\\d-ü-long'
    text = f"raw {secret} json {json.dumps({'x': secret})} ascii {json.dumps(secret, ensure_ascii=False)}"
    out = redact(text, [secret])
    assert secret not in out
    assert json.dumps(secret)[1:-1] not in out
    assert out.count(mask(secret)) == 3


def test_redact_prefers_the_longest_secret_and_does_not_rescan_its_output(monkeypatch) -> None:
    monkeypatch.setenv(MASK_KEY_ENV, "k")
    out = redact("token=abcdefghij and abcdefgh", ["abcdefgh", "abcdefghij", ""])
    assert out == f"token={mask('abcdefghij')} and {mask('abcdefgh')}"


def test_redact_never_searches_for_short_secrets() -> None:
    assert MIN_SECRET_CHARS == 8
    text = '<?xml version="1.0"?><testsuites name="pipeline-test"/>'
    assert redact(text, ["test", "x", "1234567"]) == text


def test_redact_without_secrets_is_identity() -> None:
    assert redact("hello", []) == "hello"
    assert redact("", ["x"]) == ""


def test_redact_filter_masks_log_records(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.secrets.filter")
    registry = Secrets()
    filt = RedactFilter(registry)
    filt.add(CANARY, "", "test")
    registry.add("12345678")  # learnt later by a runner: the filter shares the registry
    logger.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.info("value is %s", CANARY)
            logger.info("nothing secret here: %d", 5)
            logger.info("pin %d in step %s", 12345678, "test-step")
            logger.info(f"inline {CANARY}")
            try:
                raise ValueError(f"bad {CANARY}")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeFilter(filt)
    assert CANARY not in caplog.text and "12345678" not in caplog.text
    assert mask(CANARY) in caplog.text
    assert "nothing secret here: 5" in caplog.text
    assert "in step test-step" in caplog.text  # a short secret never masks names or words


def test_secrets_registry_is_shared_thread_safe_and_never_shows_values() -> None:
    registry = Secrets(["a-long-secret", None, ""])
    threads = [threading.Thread(target=registry.add, args=(f"value-{i:04d}",)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(registry) == 51 and "value-0007" in registry
    registry.add(1234, True)
    assert "1234" in registry and "True" not in registry and registry.short() == ["1234"]
    assert "secret" not in repr(registry)
    import copy
    assert copy.deepcopy(registry) is registry


def test_redact_json_masks_string_values_never_keys_or_names(monkeypatch) -> None:
    monkeypatch.setenv(MASK_KEY_ENV, "k")
    doc = {"msg": f"token {CANARY} used", CANARY: [CANARY, 1, None], "n": 2, "label": CANARY, "short": "test"}
    out = redact_json(doc, [CANARY, "test"], keep=NAMES)
    assert out["msg"] == f"token {mask(CANARY)} used" and out["n"] == 2
    assert out[CANARY] == [mask(CANARY), 1, None]  # the key is a name: kept
    assert out["label"] == CANARY and out["short"] == "test"
    assert redact_json(doc, [CANARY, "test"], keep=NAMES, exact=True)["short"] == mask("test")
    assert redact_json(doc, []) is doc


def test_mask_document_text_masks_values_not_names_or_syntax() -> None:
    text = "# a comment\ncase: test\nsteps:\n  - kind: set_parameters\n    name: test\n    parameters:\n" \
           "      - {name: /p, value: test, type: SecureString}\n"
    masked = mask_document_text(text, ["test"])
    import yaml
    data = yaml.safe_load(masked)
    assert data["case"] == "test" and data["steps"][0]["name"] == "test"
    assert data["steps"][0]["parameters"][0]["value"] == "****"
    assert mask_document_text("case: c\n# keep me\n", ["test"]) == "case: c\n# keep me\n"
    assert "long-secret-1" not in mask_document_text("case: c\n# long-secret-1\n", ["long-secret-1"])
    assert json.loads(mask_document_text('{"case": "c", "v": "test"}', ["test"], json_format=True))["v"] == "****"


def test_mask_paths_with_overlapping_paths_masks_each_value_once() -> None:
    doc = {"creds": {"password": CANARY}}
    masked = mask_paths(doc, ["creds", "creds.password", "*.password"])
    assert masked == {"creds": mask_any({"password": CANARY})}
    assert mask_paths(doc, ["creds.password", "*.password"]) == {"creds": {"password": mask(CANARY)}}



