"""Write-Attributes parameters: operator parameters, configured defaults, the config check,
and the simulated client's bookkeeping shown by Discover."""

from __future__ import annotations

import pytest

from corem_ingress.config import ConfigError, Lwm2mConfig
from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m import operations as ops
from corem_ingress.lwm2m.client_objects import SimulatedClient
from corem_ingress.lwm2m.linkformat import parse_links
from corem_ingress.lwm2m.model import Lwm2mPath, ValueType
from corem_ingress.lwm2m.operations import AttributeSpec, attributes_from

pytestmark = pytest.mark.unit


def test_attributes_from_operator_parameters() -> None:
    assert attributes_from({"path": "/3/0", "pmin": 5.0, "gt": 1.5, "x": 1}) == {
        "pmin": 5,
        "gt": 1.5,
    }
    with pytest.raises(InvalidArgument, match="whole number"):
        attributes_from({"pmax": 1.5})
    with pytest.raises(InvalidArgument, match="must be a number"):
        attributes_from({"st": True})


def test_attribute_spec_parses_and_builds_the_request() -> None:
    spec = AttributeSpec.parse("/3303/0/5700?pmin=5&pmax=30&st=0.5&gt=40")
    assert spec.path == Lwm2mPath.of(3303, 0, 5700)
    req = spec.request(root="/lwm2m")
    assert req.method == "PUT" and req.uri_path == ("lwm2m", "3303", "0", "5700")
    assert req.uri_query == ("pmin=5", "pmax=30", "gt=40", "st=0.5")
    assert req.payload == b""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/3/0", r"PATH\?attr=value"),
        ("/3/0?", r"PATH\?attr=value"),
        ("/3/0?foo=1", "attributes are"),
        ("/3/0?pmin=1&pmin=2", "twice"),
        ("/3/0?pmin=x", "not a number"),
        ("/3/0?pmin=1.5", "not a number"),
        ("/3/0?pmin=9&pmax=1", "pmin must not exceed pmax"),
        ("/3/0?gt=1", "apply to a resource"),
        ("/3/0/0?gt=1", "numeric resource"),
        ("/3/0/9?st=nan", "finite"),
        ("3/0?pmax=1", "path looks like"),
    ],
)
def test_attribute_spec_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        AttributeSpec.parse(text)


def test_config_default_attributes_per_tenant() -> None:
    cfg = Lwm2mConfig(
        default_attributes=["/3/0?pmax=60"],
        tenant_default_attributes={"acme": "/3303?pmin=5  /3/0/9?st=5", "quiet": ""},
    )
    cfg.validate()
    assert cfg.attributes_for("other") == ["/3/0?pmax=60"]
    assert cfg.attributes_for("acme") == ["/3303?pmin=5", "/3/0/9?st=5"]
    assert cfg.attributes_for("quiet") == []
    with pytest.raises(ConfigError, match=r"lwm2m\.tenant_default_attributes\.acme"):
        Lwm2mConfig(tenant_default_attributes={"acme": "/3/0?pmin=-1"}).validate()
    with pytest.raises(ConfigError, match=r"lwm2m\.default_attributes"):
        Lwm2mConfig(default_attributes=["/3/0?nope=1"]).validate()
    with pytest.raises(ConfigError, match=r"lwm2m\.models_dir"):
        Lwm2mConfig(models_dir="/nonexistent/ddf").validate()


def test_simulated_client_keeps_attributes_and_discover_shows_them() -> None:
    client = SimulatedClient("ep", clock=lambda: 1_700_000_000.0)
    q = ["pmin=5", "epmin=1", "epmax=30"]
    assert client.handle("PUT", ["3303", "0", "5700"], uri_query=q).code == "2.04"
    assert client.handle("PUT", ["3303", "0"], uri_query=["pmax=60"]).code == "2.04"
    links = {lk.target: dict(lk.params) for lk in parse_links(
        client.handle("GET", ["3303", "0"], accept=40).payload
    )}  # fmt: skip
    assert links["/3303/0"] == {"pmax": "60"}
    assert links["/3303/0/5700"] == {"epmax": "30", "epmin": "1", "pmin": "5"}
    # A bare name clears; an unknown attribute or a non-number is a 4.00.
    assert client.handle("PUT", ["3303", "0", "5700"], uri_query=["pmin"]).code == "2.04"
    assert client.attributes[Lwm2mPath.of(3303, 0, 5700)] == {"epmin": "1", "epmax": "30"}
    assert client.handle("PUT", ["3303", "0"], uri_query=["foo=1"]).code == "4.00"
    assert client.handle("PUT", ["3303", "0"], uri_query=["pmin=x"]).code == "4.00"
    assert ops.write_attributes("/3/0", pmax=1).uri_query == ("pmax=1",)


def test_create_and_delete_requests_and_the_simulated_client() -> None:
    from corem_ingress.lwm2m.content import CF_SENML_JSON, CF_TLV
    from corem_ingress.lwm2m.operations import DeviceResponse, interpret
    from corem_ingress.lwm2m.records import Record

    P = Lwm2mPath.parse
    recs = [
        Record(P("/3303/1/5700"), ValueType.FLOAT, 20.0),
        Record(P("/3303/2/5700"), ValueType.FLOAT, 21.0),
    ]
    client = SimulatedClient("ep", clock=lambda: 1_700_000_000.0)
    for cf in (CF_TLV, CF_SENML_JSON):
        req = ops.create("/3303", recs, content_format=cf, root="/")
        assert (req.method, req.uri_path, req.content_format) == ("POST", ("3303",), cf)
        answer = client.handle("POST", ["3303"], content_format=cf, payload=req.payload)
        assert answer.code == "2.01"
        result = interpret(req, DeviceResponse(answer.code), now=0.0)
        assert result.to_json()["instances"] == ["/3303/1", "/3303/2"]
        assert client.handle("POST", ["3303"], content_format=cf, payload=req.payload).code == (
            "4.00"  # they exist now
        )
        for i in (1, 2):
            d = ops.delete(f"/3303/{i}")
            assert (d.method, d.uri_path) == ("DELETE", ("3303", str(i)))
            assert client.handle("DELETE", ["3303", str(i)]).code == "2.02"
        assert client.handle("DELETE", ["3303", "1"]).code == "4.04"
    assert client.handle("DELETE", ["3", "0"]).code == "4.05"
    with pytest.raises(InvalidArgument, match=r"applies to: object$"):
        ops.create("/3303/1", recs)
    with pytest.raises(InvalidArgument, match="executable"):
        ops.create("/3303", [Record(P("/3303/1/5605"), ValueType.STRING, "x")])
    with pytest.raises(InvalidArgument, match="takes a float"):
        ops.create("/3303", [Record(P("/3303/1/5700"), ValueType.STRING, "x")])
