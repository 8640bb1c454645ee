"""Keys: settings validation, the key file, bearer authentication, models, admin, tiers."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from app.auth.buckets import Limits
from app.auth.keys import (
    ANONYMOUS,
    TIER_PRIORITY,
    KeyFileError,
    KeyStore,
    Principal,
    hash_key,
)
from app.auth.settings import AuthSettings
from app.errors import (
    AuthenticationError,
    ModelNotFoundError,
    PermissionDeniedError,
)

ALICE_KEY = "gw-alice-0123456789abcdef"
BOB_KEY = "gw-bob-0123456789abcdef"


def write_key_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(body)
    return path


def file_store(tmp_path: Path, body: str, **settings: Any) -> KeyStore:
    path = write_key_file(tmp_path, body)
    return KeyStore.from_settings(AuthSettings(enable_auth=True, api_keys_file=path, **settings))


ALICE_ENTRY = f"""
keys:
  - name: alice
    sha256: {hash_key(ALICE_KEY)}
    rpm: 600
    tpm: 5000
    concurrency: 3
    tier: premium
    models: [tiny-llama]
    admin: true
  - name: bob
    sha256: {hash_key(BOB_KEY).upper()}
    tier: batch
"""


# --- settings -----------------------------------------------------------------------------


def test_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flat env names land in AuthSettings and make the default limits."""
    monkeypatch.setenv("ENABLE_AUTH", "true")
    monkeypatch.setenv("API_KEYS", f" {ALICE_KEY} , {BOB_KEY},")
    monkeypatch.setenv("RATE_LIMIT_RPM", "120")
    monkeypatch.setenv("RATE_LIMIT_BURST", "10")
    monkeypatch.setenv("RATE_LIMIT_FAIL_MODE", "closed")
    settings = AuthSettings()
    assert settings.plain_keys() == [ALICE_KEY, BOB_KEY]
    assert settings.default_limits == Limits(rpm=120, tpm=100_000, burst=10, concurrency=16)
    assert settings.rate_limit_fail_mode == "closed"
    assert ALICE_KEY not in repr(settings)


def test_optional_limits_can_be_unset_from_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """RATE_LIMIT_CONCURRENCY=none removes the per-key cap."""
    monkeypatch.setenv("RATE_LIMIT_CONCURRENCY", "none")
    assert AuthSettings().default_limits.concurrency is None


def test_auth_on_without_keys_is_refused() -> None:
    """ENABLE_AUTH with no key at all would lock everyone out: refused at start-up."""
    with pytest.raises(ValidationError, match="ENABLE_AUTH=true needs API_KEYS"):
        AuthSettings(enable_auth=True, api_keys=SecretStr(" , "))


def test_keys_with_auth_off_are_refused() -> None:
    """Keys configured but auth off would look protected while open: refused."""
    with pytest.raises(ValidationError, match="ENABLE_AUTH=false"):
        AuthSettings(api_keys=SecretStr(ALICE_KEY))


def test_bad_key_sources_are_refused_without_echoing_keys(tmp_path: Path) -> None:
    """Duplicate keys or a missing file are refused; the error never shows a key."""
    with pytest.raises(ValidationError) as caught:
        AuthSettings(enable_auth=True, api_keys=SecretStr(f"{ALICE_KEY},{ALICE_KEY}"))
    assert "twice" in str(caught.value) and ALICE_KEY not in str(caught.value)
    with pytest.raises(ValidationError, match="not a file"):
        AuthSettings(enable_auth=True, api_keys_file=tmp_path / "missing.yaml")


def test_unknown_storage_is_refused_without_echoing_the_url() -> None:
    """A storage URL that is not memory or redis is refused, naming only its scheme."""
    with pytest.raises(ValidationError) as caught:
        AuthSettings(rate_limit_storage=SecretStr("http://user:hunter2@cache:6379"))
    assert "'http'" in str(caught.value) and "hunter2" not in str(caught.value)
    assert AuthSettings(
        rate_limit_storage=SecretStr("rediss://cache:6380/1")
    ).storage_url.startswith("rediss")


# --- bearer authentication ----------------------------------------------------------------


def plain_store(*keys: str) -> KeyStore:
    return KeyStore.from_settings(
        AuthSettings(enable_auth=True, api_keys=SecretStr(",".join(keys)))
    )


def test_plain_key_authenticates_with_default_limits() -> None:
    """A key from API_KEYS maps to a stable, non-secret name and the default limits."""
    principal = plain_store(ALICE_KEY, BOB_KEY).authenticate(f"Bearer {BOB_KEY}")
    assert principal.name == f"key-{hash_key(BOB_KEY)[:8]}"
    assert principal.limits == AuthSettings().default_limits
    assert principal.tier == "standard" and not principal.is_admin and principal.auth_enabled


@pytest.mark.parametrize(
    "header", [f"bearer {ALICE_KEY}", f"BEARER   {ALICE_KEY}  ", f"  Bearer {ALICE_KEY}"]
)
def test_bearer_scheme_is_case_insensitive_and_trimmed(header: str) -> None:
    """The scheme is matched without case and surrounding spaces are ignored (RFC 7235)."""
    assert plain_store(ALICE_KEY).authenticate(header).name.startswith("key-")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("Bearer", "missing_api_key"),
        (f"Basic {ALICE_KEY}", "missing_api_key"),
        (ALICE_KEY, "missing_api_key"),
        ("Bearer gw-wrong", "invalid_api_key"),
        (f"Bearer {ALICE_KEY}x", "invalid_api_key"),
    ],
)
def test_missing_or_wrong_key_is_401_with_bearer_challenge(header: str | None, code: str) -> None:
    """No usable bearer token or an unknown key → 401 with WWW-Authenticate, key not echoed."""
    with pytest.raises(AuthenticationError) as caught:
        plain_store(ALICE_KEY).authenticate(header)
    error = caught.value
    assert error.status == 401 and error.code == code
    assert error.headers()["WWW-Authenticate"] == "Bearer"
    assert ALICE_KEY not in error.message


def test_every_stored_key_can_match() -> None:
    """Matching scans all digests: the first, a middle and the last key all authenticate."""
    keys = [f"gw-key-{i:04d}-padding" for i in range(50)]
    store = plain_store(*keys)
    for key in (keys[0], keys[25], keys[-1]):
        assert store.authenticate(f"Bearer {key}").name == f"key-{hash_key(key)[:8]}"


def test_store_keeps_no_plain_key() -> None:
    """Only digests are kept: no attribute of the store or its principals holds a key."""
    store = plain_store(ALICE_KEY)
    assert ALICE_KEY not in repr(vars(store)) and len(store) == 1


def test_auth_off_gives_the_anonymous_principal() -> None:
    """With auth off any header is ignored; the caller is 'anonymous' with default limits."""
    settings = AuthSettings(rate_limit_rpm=7)
    store = KeyStore.from_settings(settings)
    for header in (None, "Bearer whatever"):
        principal = store.authenticate(header)
        assert principal.name == ANONYMOUS and principal.limits.rpm == 7
        assert principal.auth_enabled is False


# --- the key file -------------------------------------------------------------------------


def test_key_file_sets_limits_tier_models_and_admin(tmp_path: Path) -> None:
    """File entries carry their own limits, tier, models and admin flag; the rest default."""
    store = file_store(tmp_path, ALICE_ENTRY, rate_limit_burst=4)
    alice = store.authenticate(f"Bearer {ALICE_KEY}")
    assert alice.limits == Limits(rpm=600, tpm=5000, burst=None, concurrency=3)
    assert alice.tier == "premium" and alice.priority == 0 and alice.is_admin
    bob = store.authenticate(f"Bearer {BOB_KEY}")  # digest written in upper case
    assert bob.limits == Limits(rpm=60, tpm=100_000, burst=4, concurrency=16)
    assert bob.priority == 9 and bob.models is None


def test_tiers_order_like_vllm_lower_runs_sooner() -> None:
    """premium < standard < batch, as vLLM's priority numbers."""
    assert TIER_PRIORITY["premium"] < TIER_PRIORITY["standard"] < TIER_PRIORITY["batch"]


def two_entries(*entries: tuple[str, str]) -> str:
    lines = [f"  - {{name: {name}, sha256: {hash_key(key)}}}" for name, key in entries]
    return "keys:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("keys:\n  - name: a\n    sha256: abc\n", "sha256"),
        (f"keys:\n  - name: a\n    sha256: {hash_key('x')}\n    key: x\n", "key"),
        (f"keys:\n  - name: a\n    sha256: {hash_key('x')}\n    tier: gold\n", "tier"),
        (two_entries(("a", "x"), ("a", "y")), "unique"),
        (two_entries(("a", "x"), ("b", "x")), "same sha256"),
        ("keys: [\n", "invalid YAML"),
    ],
)
def test_bad_key_file_stops_startup_with_one_line(tmp_path: Path, body: str, problem: str) -> None:
    """An invalid file raises KeyFileError naming the file and the problem, on one line."""
    with pytest.raises(KeyFileError) as caught:
        file_store(tmp_path, body)
    message = str(caught.value)
    assert "keys.yaml" in message and problem in message and "\n" not in message


def test_same_key_in_api_keys_and_file_is_refused(tmp_path: Path) -> None:
    """A key listed in both sources would match twice: refused."""
    path = write_key_file(tmp_path, ALICE_ENTRY)
    settings = AuthSettings(enable_auth=True, api_keys=SecretStr(ALICE_KEY), api_keys_file=path)
    with pytest.raises(KeyFileError, match="twice"):
        KeyStore.from_settings(settings)


def test_empty_key_file_is_valid(tmp_path: Path) -> None:
    """A file with just ``keys:`` is an empty store (keys may come from API_KEYS)."""
    path = write_key_file(tmp_path, "keys:\n")
    settings = AuthSettings(enable_auth=True, api_keys=SecretStr(ALICE_KEY), api_keys_file=path)
    assert len(KeyStore.from_settings(settings)) == 1


# --- models and admin ---------------------------------------------------------------------


def test_key_sees_only_its_models(tmp_path: Path) -> None:
    """A model outside the key's list is 404 model_not_found, as OpenAI answers."""
    store = file_store(tmp_path, ALICE_ENTRY)
    alice = store.authenticate(f"Bearer {ALICE_KEY}")
    alice.check_model("tiny-llama")
    assert alice.can_use("tiny-llama") and not alice.can_use("gpt-4")
    with pytest.raises(ModelNotFoundError) as caught:
        alice.check_model("gpt-4")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    store.authenticate(f"Bearer {BOB_KEY}").check_model("gpt-4")  # no list: every model


def test_admin_routes_need_an_admin_key(tmp_path: Path) -> None:
    """Admin routes: admin key passes, other keys get 403, no key gets 401."""
    store = file_store(tmp_path, ALICE_ENTRY)
    assert store.authenticate_admin(f"Bearer {ALICE_KEY}").name == "alice"
    with pytest.raises(PermissionDeniedError) as caught:
        store.authenticate_admin(f"Bearer {BOB_KEY}")
    assert caught.value.status == 403
    with pytest.raises(AuthenticationError):
        store.authenticate_admin(None)


def test_admin_routes_without_required_key(tmp_path: Path) -> None:
    """ADMIN_ROUTES_REQUIRE_KEY=false: no key needed, but a key that is sent must be valid."""
    store = file_store(tmp_path, ALICE_ENTRY, admin_routes_require_key=False)
    assert store.authenticate_admin(None).name == ANONYMOUS
    assert store.authenticate_admin(f"Bearer {BOB_KEY}").name == "bob"
    with pytest.raises(AuthenticationError):
        store.authenticate_admin("Bearer gw-wrong")


def test_admin_routes_are_open_when_auth_is_off() -> None:
    """With auth off every route is open, the admin ones too."""
    assert KeyStore.from_settings(AuthSettings()).authenticate_admin(None).name == ANONYMOUS


def test_principal_priority_follows_tier() -> None:
    """Principal.priority is the tier's number for the admission queue and vLLM."""
    limits = Limits(rpm=1, tpm=1)
    priorities = [
        Principal("p", limits, tier).priority for tier in ("premium", "standard", "batch")
    ]
    assert priorities == [0, 5, 9]


def test_auth_package_imports_no_web_framework_or_engine() -> None:
    """app/auth stays plain Python: no FastAPI, Starlette or vLLM import in its modules."""
    forbidden = {"fastapi", "starlette", "vllm"}
    for path in Path("app/auth").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in getattr(node, "names", [])]
            module = getattr(node, "module", None)
            roots = {name.split(".")[0] for name in [*names, module or ""]}
            if isinstance(node, ast.Import | ast.ImportFrom):
                assert not roots & forbidden, f"{path} imports {roots & forbidden}"
