"""Pure parts, no event loop: operator token lines, which key a request carries, bodies."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from corem_ingress.adapters.http.bodies import parse_json, parse_json_object
from corem_ingress.adapters.http.device_auth import api_key_from_headers
from corem_ingress.adapters.http.operators import (
    Operator,
    OperatorTokens,
    generate_token,
    hash_token,
    main,
    parse_tokens,
)
from corem_ingress.adapters.http.uplink import parse_uplink_body
from corem_ingress.config import ConfigError, HttpConfig
from corem_ingress.core.errors import InvalidArgument, Unauthenticated
from corem_ingress.core.uplink import UplinkKind

pytestmark = pytest.mark.unit

KEY = "sk_live_" + "A" * 43


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_token_lines() -> None:
    t1, t2 = generate_token(), generate_token()
    text = f"""
    # comment
    acme:{hash_token(t1)}:ops-alice
    globex:{hash_token(t2).upper()}
    """
    entries = parse_tokens(text, "file")
    assert entries == [
        (hash_token(t1), Operator("acme", "ops-alice")),
        (hash_token(t2), Operator("globex", f"globex-{hash_token(t2)[:8]}")),
    ]
    tokens = OperatorTokens(entries)
    assert tokens.authenticate(f"Bearer {t1}") == Operator("acme", "ops-alice")
    assert tokens.authenticate(f"bearer  {t2} ").tenant_id == "globex"
    assert tokens.authenticate(f"Bearer {t1}").actor == "admin:ops-alice"
    for bad in (None, t1, f"Basic {t1}", "Bearer", f"Bearer {t1}x", f"Bearer {hash_token(t1)}"):
        with pytest.raises(Unauthenticated) as info:
            tokens.authenticate(bad)
        assert info.value.message == "invalid or missing credential"


@pytest.mark.parametrize(
    "line",
    [
        "acme",
        "acme:abc",
        f"Acme Corp:{'a' * 64}",
        f"acme:{'g' * 64}",
        f"acme:{'a' * 64}:bad name",
        f"acme:{'a' * 64}:n:extra",
        "acme:cop_the-raw-token-by-mistake",
    ],
)
def test_bad_token_lines_name_the_entry_not_the_content(line: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tokens(f"# ok\n{line}\n", "tokens file")
    assert "entry 2" in str(info.value)
    assert "raw-token" not in str(info.value)


def test_one_token_one_tenant_and_env_plus_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = generate_token()
    digest = hash_token(token)
    with pytest.raises(ConfigError):
        OperatorTokens(parse_tokens(f"acme:{digest}\nglobex:{digest}", "x"))
    path = tmp_path / "tokens"
    other = generate_token()
    path.write_text(f"globex:{hash_token(other)}\n")
    tokens = OperatorTokens.load(
        HttpConfig(admin_tokens_file=str(path)),
        {"COREM_HTTP_ADMIN_TOKENS": f"acme:{digest};"},
    )
    assert len(tokens) == 2
    assert tokens.authenticate(f"Bearer {token}").tenant_id == "acme"
    assert tokens.authenticate(f"Bearer {other}").tenant_id == "globex"
    with pytest.raises(ConfigError, match="cannot read"):
        OperatorTokens.load(HttpConfig(admin_tokens_file=str(tmp_path / "missing")), {})


def test_token_generator_prints_token_and_hash_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tenant", "acme", "--name", "ops"]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["line"] == f"acme:{hash_token(out['token'])}:ops"


def test_which_key_a_request_carries() -> None:
    assert api_key_from_headers(headers(("X-API-Key", KEY))) == KEY
    assert api_key_from_headers(headers(("Authorization", f"Bearer {KEY}"))) == KEY
    assert (
        api_key_from_headers(headers(("authorization", f"BEARER {KEY}"), ("x-api-key", KEY))) == KEY
    )
    with pytest.raises(InvalidArgument):
        api_key_from_headers(
            headers(("Authorization", f"Bearer {KEY}"), ("X-API-Key", KEY[:-1] + "E"))
        )
    with pytest.raises(InvalidArgument):
        api_key_from_headers(headers(("X-API-Key", KEY), ("X-API-Key", KEY)))
    for bad in [
        (),
        (("Authorization", f"Basic {KEY}"),),
        (("X-API-Key", " "),),
        (("X-API-Key", "k" * 600),),
    ]:
        with pytest.raises(Unauthenticated):
            api_key_from_headers(headers(*bad))


def test_uplink_body() -> None:
    assert parse_uplink_body(b'{"kind":"event","payload":"x"}') == (UplinkKind.EVENT, "x")
    assert parse_uplink_body(b'{"payload":null,"kind":"state"}') == (UplinkKind.STATE, None)
    for bad in [
        b"",
        b"null",
        b'{"kind":"EVENT","payload":1}',
        b'{"kind":"event","payload":-Infinity}',
    ]:
        with pytest.raises(InvalidArgument):
            parse_uplink_body(bad)


def test_strict_json() -> None:
    assert parse_json(b'{"a": [1, 2.5, "\\u00e9"]}') == {"a": [1, 2.5, "é"]}
    for bad in [b"NaN", b"1e400", b"\xc3(", b"[" * 50_000, b"1" * 5000]:
        with pytest.raises(InvalidArgument):
            parse_json(bad)
    assert parse_json(b"[" * 64 + b"]" * 64) is not None  # 64 levels: fine
    with pytest.raises(InvalidArgument, match="deeper"):
        parse_json(b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}")
    assert parse_json_object(b"  ", allowed=frozenset(), empty_ok=True) == {}
    with pytest.raises(InvalidArgument, match="unknown field"):
        parse_json_object(b'{"x": 1}', allowed=frozenset({"y"}))
