"""The CLI's argument parser (no Redis, no broker)."""

import pytest

from corem_ingress.cli import _config_path, build_parser

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "x.yaml", "serve"],
        ["serve", "--config", "x.yaml"],
        ["--config", "x.yaml", "devices", "get", "--tenant", "acme", "--device", "d"],
        ["devices", "get", "--tenant", "acme", "--device", "d", "--config", "x.yaml"],
    ],
)
def test_config_is_taken_before_or_after_the_subcommand(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, ``--config`` given before the subcommand was silently dropped: the subcommand's
    own default (None) overwrote it, so the command ran on the defaults."""
    monkeypatch.delenv("COREM_CONFIG", raising=False)
    args = build_parser(simulate=False).parse_args(argv)
    assert _config_path(args) == "x.yaml"


def test_no_config_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREM_CONFIG", raising=False)
    args = build_parser(simulate=False).parse_args(["devices", "list", "--tenant", "acme"])
    assert _config_path(args) is None
    monkeypatch.setenv("COREM_CONFIG", "env.yaml")
    assert _config_path(args) == "env.yaml"


_DM = ["--tenant", "acme", "--device", "d"]


@pytest.mark.parametrize(
    ("argv", "params"),
    [
        (["write-attributes", *_DM, "--path", "/3303/0/5700", "--pmin", "5", "--gt", "30.5",
          "--epmax", "30", "--clear", "lt, st"],
         {"path": "/3303/0/5700", "pmin": 5, "gt": 30.5, "epmax": 30, "clear": ["lt", "st"]}),
        (["create", *_DM, "--path", "/3303", "--values", '[{"path": "/3303/7/5700", "value": 1}]'],
         {"path": "/3303", "values": [{"path": "/3303/7/5700", "value": 1}]}),
        (["delete", *_DM, "--path", "/3303/7", "--timeout", "3"],
         {"path": "/3303/7", "timeout_s": 3.0}),
        (["read-composite", *_DM, "--paths", "/3/0/0,/3303/0", "--accept", "112"],
         {"paths": ["/3/0/0", "/3303/0"], "accept": 112}),
        (["observe-composite", *_DM, "--paths", "/3303/0"], {"paths": ["/3303/0"]}),
        (["cancel-observe-composite", *_DM, "--paths", "/3303/0"], {"paths": ["/3303/0"]}),
        (["write-composite", *_DM, "--values", '{"path": "/1/0/2", "value": 5}'],
         {"values": [{"path": "/1/0/2", "value": 5}]}),
    ],
)  # fmt: skip
def test_lwm2m_options_become_the_admin_api_body(
    argv: list[str], params: dict[str, object]
) -> None:
    """Issue 15: each new LwM2M subcommand's options give the body the admin API takes (the
    routed CLI run of each is in tests/lwm2m/test_routing_cli.py)."""
    from corem_ingress.cli import lwm2m_params

    args = build_parser(simulate=False).parse_args(["lwm2m", *argv])
    assert lwm2m_params(args) == params


@pytest.mark.parametrize(
    "argv",
    [
        ["read-composite", *_DM],  # composite: --paths
        ["write-composite", *_DM, "--paths", "/3/0", "--values", "[]"],
        ["write-attributes", *_DM, "--path", "/3/0", "--pmin", "1.5"],  # whole seconds
        ["create", *_DM, "--path", "/3303"],  # --values needed
    ],
)
def test_lwm2m_option_mistakes_are_usage_errors(argv: list[str]) -> None:
    from corem_ingress.cli import CliError

    with pytest.raises(CliError, match=r"argument|required"):
        build_parser(simulate=False).parse_args(["lwm2m", *argv])


@pytest.mark.parametrize("transport", ["lwm2m", "http", "dtls", "smtp"])
def test_sessions_filter_only_by_a_transport_a_session_can_have(transport: str) -> None:
    """Before, ``--transport lwm2m`` (and http, dtls) was accepted and always listed nothing:
    LwM2M devices' sessions are their DTLS sessions, indexed as ``coap``."""
    from corem_ingress.cli import CliError, cmd_sessions

    argv = ["sessions", "list", "--tenant", "acme", "--transport", transport]
    args = build_parser(simulate=False).parse_args(argv)
    with pytest.raises(CliError, match=r"mqtt, coap$"):
        cmd_sessions(args)


def test_lwm2m_events_after_names_the_option_it_checks() -> None:
    """Before, ``lwm2m events --after bogus`` said "Last-Event-ID is an event id": the HTTP
    header's name, which the CLI user never typed."""
    from corem_ingress.cli import CliError

    parse = build_parser(simulate=False).parse_args
    with pytest.raises(CliError, match=r"^argument --after: must be an event id") as err:
        parse(["lwm2m", "events", "--tenant", "acme", "--after", "bogus"])
    assert "Last-Event-ID" not in str(err.value)
    for ok in ("0", "1700000000000-0"):
        assert parse(["lwm2m", "events", "--tenant", "acme", "--after", ok]).after == ok
