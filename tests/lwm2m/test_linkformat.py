"""CoRE Link Format (RFC 6690) and the LwM2M registration object list: pure, no I/O."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.linkformat import (
    Link,
    LinkFormatError,
    ObjectLink,
    ObjectList,
    parse_links,
    parse_object_list,
    serialize_links,
)
from corem_ingress.lwm2m.model import Lwm2mPath

pytestmark = pytest.mark.unit

ISSUE_EXAMPLE = '</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303/0>;ver=1.1'


def test_parse_issue_example() -> None:
    links = parse_links(ISSUE_EXAMPLE)
    assert links == (
        Link("/", (("rt", "oma.lwm2m"), ("ct", "11543"))),
        Link("/1/0"),
        Link("/3/0"),
        Link("/3303/0", (("ver", "1.1"),)),
    )
    assert links[0].param("rt") == "oma.lwm2m"
    assert links[0].param("missing") is None


def test_object_list_of_issue_example() -> None:
    objs = parse_object_list(ISSUE_EXAMPLE.encode())
    assert objs.root == "/"
    assert objs.content_formats == (11543,)
    assert objs.objects == (ObjectLink(1, 0), ObjectLink(3, 0), ObjectLink(3303, 0, "1.1"))
    assert objs.object_ids() == [1, 3, 3303]
    assert objs.instances(3) == [0]
    assert objs.has(Lwm2mPath.parse("/3/0/0"))
    assert not objs.has(Lwm2mPath.parse("/3/1"))
    assert not objs.has(Lwm2mPath.parse("/5"))
    assert objs.to_link_format() == ISSUE_EXAMPLE
    assert ObjectList.from_json(objs.to_json()) == objs


def test_lwm2m_10_list_without_root_link() -> None:
    objs = parse_object_list(b"</1/0>,</3/0>,</5>,</3303>;ver=1.1,</3303/0>,</3303/1>")
    assert objs.root == "/" and objs.content_formats == ()
    assert objs.instances(3303) == [0, 1]
    assert objs.has(Lwm2mPath.parse("/5")) and objs.has(Lwm2mPath.parse("/5/0/1"))


def test_alternate_root_path_and_quoted_ct() -> None:
    objs = parse_object_list('</lwm2m>;rt="oma.lwm2m";ct="110 112",</lwm2m/1/0>,</lwm2m/3/0>')
    assert objs.root == "/lwm2m"
    assert objs.content_formats == (110, 112)
    assert objs.object_ids() == [1, 3]
    assert parse_object_list(objs.to_link_format()) == objs


def test_security_and_oscore_objects_are_dropped() -> None:
    objs = parse_object_list("</0/0>,</21/0>,</1/0>")
    assert objs.objects == (ObjectLink(1, 0),)


def test_empty_document() -> None:
    assert parse_links("") == ()
    assert parse_object_list(b"").objects == ()


def test_quoted_string_escapes_round_trip() -> None:
    links = parse_links(r'</a>;title="say \"hi\" \\ there";rt="x y",</b>;obs')
    assert links[0].param("title") == 'say "hi" \\ there'
    assert links[1].param("obs") == ""
    assert parse_links(serialize_links(links)) == links


@pytest.mark.parametrize(
    "bad",
    [
        "</1/0",  # unterminated
        "1/0>",  # no '<'
        "</1/0>,",  # trailing comma
        "</1/0>;",  # empty parameter
        "</1/0>;ver=",  # empty value
        '</1/0>;ver="1.1',  # unterminated quote
        "</1/0> ,</3/0>",  # whitespace
        "</1/0>;</3/0>",  # parameter name expected
        "</1 0>",  # space in target
        "</1/0>x",  # garbage after link
        '</1/0>;title="a\x01b"',  # control character
        "</1/0>;ver=1,1",  # ',' ends the link: '1' is not a link
    ],
)
def test_malformed_link_format_is_4_00(bad: str) -> None:
    with pytest.raises(LinkFormatError) as info:
        parse_object_list(bad)
    assert info.value.coap_code == "4.00"
    assert isinstance(info.value, InvalidArgument)
    assert "malformed link format" in info.value.message


@pytest.mark.parametrize(
    "bad",
    [
        "</1/0/0>",  # resource: not an object or instance
        "</a/0>",  # not numeric
        "</01/0>",  # leading zero
        "</65535/0>",  # reserved id
        "</1/0>,</1/0>",  # duplicate
        '</>;rt="oma.lwm2m",</x>;rt="oma.lwm2m"',  # two roots
        '</>;rt="oma.lwm2m";ct=abc,</1/0>',  # bad ct
        "</3303/0>;ver=one",  # bad ver
        '</lwm2m/>;rt="oma.lwm2m",</lwm2m/1/0>',  # root ends with '/'
        '</lwm2m>;rt="oma.lwm2m",</1/0>',  # object outside the root
        "<>",
        "</>",
    ],
)
def test_not_an_lwm2m_object_list(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_object_list(bad)


def test_not_utf8_and_too_large() -> None:
    with pytest.raises(LinkFormatError, match="not UTF-8"):
        parse_links(b'</1/0>;title="\xff"')
    with pytest.raises(LinkFormatError, match="too large"):
        parse_links(b"</1/0>," * 20000)


def test_error_message_never_echoes_input() -> None:
    with pytest.raises(LinkFormatError) as info:
        parse_object_list("</SECRETVALUE")
    assert "SECRETVALUE" not in info.value.message


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-._", min_size=1, max_size=8)
_values = st.none() | st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=12,
)
_targets = st.text(alphabet="abcdefghijklmnop0123456789/-._~:@!$&'()*+;=%", max_size=16)
_links = st.lists(
    st.builds(Link, _targets, st.lists(st.tuples(_names, _values), max_size=4).map(tuple)),
    max_size=6,
)


@given(_links)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_serialize_parse_round_trip(links: list[Link]) -> None:
    # A document with no link and one empty link serialize alike: skip the degenerate case.
    if links == [Link("")]:
        return
    assert parse_links(serialize_links(links)) == tuple(links)


@given(st.binary(max_size=200) | st.text(max_size=200))
@settings(max_examples=500, deadline=None, derandomize=True, database=None)
def test_garbage_only_raises_invalid_argument(data: bytes | str) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_object_list(data)


_objects = st.lists(
    st.builds(
        ObjectLink,
        st.integers(1, 65534).filter(lambda i: i != 21),
        st.none() | st.integers(0, 65534),
        st.none() | st.sampled_from(["1.0", "1.1", "2.0"]),
    ),
    max_size=10,
    unique_by=lambda o: (o.object_id, o.instance_id),
)


@given(
    _objects, st.sampled_from(["/", "/lwm2m", "/a/b"]), st.lists(st.integers(0, 65535), max_size=3)
)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
def test_object_list_round_trip(objs: list[ObjectLink], root: str, cts: list[int]) -> None:
    value = ObjectList(tuple(objs), root, tuple(cts))
    assert parse_object_list(value.to_link_format()) == value
    assert ObjectList.from_json(value.to_json()) == value
