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
