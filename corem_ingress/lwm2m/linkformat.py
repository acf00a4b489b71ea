"""CoRE Link Format (RFC 6690): a strict parser and a serializer, plus the LwM2M object list.

``parse_links`` reads any link-format document (also Discover answers);
``parse_object_list`` reads a Register/Update payload such as
``</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303>;ver=1.1,</3303/0>`` into
``ObjectList``. Malformed input raises ``LinkFormatError`` (an ``InvalidArgument``:
CoAP 4.00) whose message says what and where (a byte offset), never echoing input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from corem_ingress.core.errors import InvalidArgument
from corem_ingress.lwm2m.model import MAX_ID, Lwm2mPath

CF_LINK_FORMAT = 40
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_LINKS = 2048
MAX_PARAMS_PER_LINK = 16

# RFC 3986 characters of a URI-reference (percent-encoding included via '%').
_URI_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
)
# RFC 5987 parmname (attr-char).
_PARMNAME_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
# RFC 6690 ptokenchar.
_PTOKEN_CHARS = frozenset(
    "!#$%&'()*+-./0123456789:<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~"
)
#: Parameters serialized quoted even when a ptoken would do (RFC 6690 writes them quoted).
_ALWAYS_QUOTED = frozenset({"rt", "if", "rel", "rev", "anchor", "title"})


class LinkFormatError(InvalidArgument):
    """Malformed link format; maps to CoAP 4.00 Bad Request."""

    def __init__(self, what: str, offset: int | None = None) -> None:
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"malformed link format: {what}{where}")


@dataclass(frozen=True, slots=True)
class Link:
    """One link-value: ``<target>`` and its parameters in order (value None for a bare name)."""

    target: str
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        """The first value of ``name`` ('' for a bare name), or None when absent."""
        for key, value in self.params:
            if key == name:
                return "" if value is None else value
        return None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)


def parse_links(data: str | bytes) -> tuple[Link, ...]:
    """Parse a link-format document; an empty document is no links."""
    if isinstance(data, bytes):
        if len(data) > MAX_DOCUMENT_BYTES:
            raise LinkFormatError("document too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LinkFormatError("not UTF-8", exc.start) from None
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
            raise LinkFormatError("document too large")
    return _Parser(text).links()


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def links(self) -> tuple[Link, ...]:
        out: list[Link] = []
        if not self.s:
            return ()
        while True:
            out.append(self._link())
            if len(out) > MAX_LINKS:
                raise LinkFormatError("too many links")
            c = self._peek()
            if c == "":
                return tuple(out)
            if c != ",":
                raise LinkFormatError("expected ',' or end of document", self.i)
            self.i += 1

    def _link(self) -> Link:
        if self._peek() != "<":
            raise LinkFormatError("expected '<'", self.i)
        end = self.s.find(">", self.i + 1)
        if end < 0:
            raise LinkFormatError("unterminated '<'", self.i)
        target = self.s[self.i + 1 : end]
        bad = next((k for k, c in enumerate(target) if c not in _URI_CHARS), None)
        if bad is not None:
            raise LinkFormatError("invalid character in link target", self.i + 1 + bad)
        self.i = end + 1
        params: list[tuple[str, str | None]] = []
        while self._peek() == ";":
            self.i += 1
            params.append(self._param())
            if len(params) > MAX_PARAMS_PER_LINK:
                raise LinkFormatError("too many parameters in one link", self.i)
        return Link(target, tuple(params))

    def _param(self) -> tuple[str, str | None]:
        start = self.i
        while self._peek() and self._peek() in _PARMNAME_CHARS:
            self.i += 1
        name = self.s[start : self.i]
        if not name:
            raise LinkFormatError("expected a parameter name", self.i)
        if self._peek() != "=":
            return name, None
        self.i += 1
        if self._peek() == '"':
            return name, self._quoted()
        start = self.i
        while self._peek() and self._peek() in _PTOKEN_CHARS:
            self.i += 1
        if self.i == start:
            raise LinkFormatError("expected a parameter value", self.i)
        return name, self.s[start : self.i]

    def _quoted(self) -> str:
        start = self.i
        self.i += 1
        out: list[str] = []
        while True:
            c = self._peek()
            if c == "":
                raise LinkFormatError("unterminated quoted string", start)
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                nxt = self._peek()
                if nxt == "":
                    raise LinkFormatError("unterminated quoted string", start)
                out.append(nxt)
                self.i += 1
            elif ord(c) < 0x20 or c == "\x7f":
                raise LinkFormatError("control character in quoted string", self.i - 1)
            else:
                out.append(c)


def _value(name: str, value: str) -> str:
    if value and name not in _ALWAYS_QUOTED and all(c in _PTOKEN_CHARS for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_links(links: Iterable[Link]) -> str:
    """The inverse of ``parse_links`` (``parse_links(serialize_links(x)) == x``)."""
    parts: list[str] = []
    for link in links:
        if any(c not in _URI_CHARS for c in link.target) or ">" in link.target:
            raise InvalidArgument("link target is not a URI reference")
        item = [f"<{link.target}>"]
        for name, value in link.params:
            if not name or any(c not in _PARMNAME_CHARS for c in name):
                raise InvalidArgument("link parameter name is not a token")
            if value is not None and any(ord(c) < 0x20 or c == "\x7f" for c in value):
                raise InvalidArgument("link parameter value has a control character")
            item.append(name if value is None else f"{name}={_value(name, value)}")
        parts.append(";".join(item))
    return ",".join(parts)


# -- the LwM2M registration object list ----------------------------------------------------

LWM2M_RT = "oma.lwm2m"
_VERSION_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")
#: Objects that a client must not announce at registration (Security, OSCORE): dropped.
_NOT_REGISTERED = frozenset({0, 21})


@dataclass(frozen=True, slots=True, order=True)
class ObjectLink:
    """An announced object (``instance_id`` None) or object instance, with its version."""

    object_id: int
    instance_id: int | None = None
    version: str | None = None

    @property
    def path(self) -> Lwm2mPath:
        if self.instance_id is None:
            return Lwm2mPath((self.object_id,))
        return Lwm2mPath((self.object_id, self.instance_id))


@dataclass(frozen=True, slots=True)
class ObjectList:
    """What a client announced: alternate root path, content formats, objects and instances."""

    objects: tuple[ObjectLink, ...] = ()
    #: The client's root path ("/" unless it announced e.g. ``</lwm2m>;rt="oma.lwm2m"``).
    root: str = "/"
    #: Content formats from the ``ct`` parameter of the root link (LwM2M 1.1).
    content_formats: tuple[int, ...] = field(default=())

    def object_ids(self) -> list[int]:
        return sorted({o.object_id for o in self.objects})

    def instances(self, object_id: int) -> list[int]:
        return sorted(
            o.instance_id
            for o in self.objects
            if o.object_id == object_id and o.instance_id is not None
        )

    def has(self, path: Lwm2mPath) -> bool:
        """Whether ``path`` lies under an announced object (or instance, for deeper paths)."""
        if path.object_id is None:
            return True
        if path.instance_id is None:
            return any(o.object_id == path.object_id for o in self.objects)
        return any(
            o.object_id == path.object_id and o.instance_id in (None, path.instance_id)
            for o in self.objects
        )

    def to_links(self) -> tuple[Link, ...]:
        out: list[Link] = []
        if self.root != "/" or self.content_formats:
            params: list[tuple[str, str | None]] = [("rt", LWM2M_RT)]
            if self.content_formats:
                cts = " ".join(str(c) for c in self.content_formats)
                params.append(("ct", cts))
            out.append(Link(self.root, tuple(params)))
        prefix = "" if self.root == "/" else self.root
        for o in self.objects:
            ver = () if o.version is None else (("ver", o.version),)
            out.append(Link(prefix + str(o.path), ver))
        return tuple(out)

    def to_link_format(self) -> str:
        return serialize_links(self.to_links())

    def to_json(self) -> dict[str, object]:
        return {
            "root": self.root,
            "content_formats": list(self.content_formats),
            "objects": [
                {"path": str(o.path), **({"ver": o.version} if o.version else {})}
                for o in self.objects
            ],
        }

    @classmethod
    def from_json(cls, data: object) -> ObjectList:
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            objects = []
            for item in data["objects"]:
                path = Lwm2mPath.parse(item["path"])
                objects.append(ObjectLink(path.ids[0], path.instance_id, item.get("ver")))
            return cls(
                tuple(objects),
                str(data["root"]),
                tuple(int(c) for c in data["content_formats"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidArgument("malformed stored object list", reason=repr(exc)) from None


def _path_ids(target: str, prefix: str) -> list[int] | None:
    """Ids of ``target`` under ``prefix`` ('' for the root), or None if it is not an object path."""
    if not target.startswith(prefix + "/"):
        return None
    rest = target[len(prefix) + 1 :]
    if not rest:
        return []
    ids: list[int] = []
    for part in rest.split("/"):
        if not part.isascii() or not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            return None
        value = int(part)
        if value > MAX_ID:
            return None
        ids.append(value)
    return ids


def _content_formats(value: str) -> tuple[int, ...]:
    parts = value.split(" ")
    if not parts or any(not p.isascii() or not p.isdigit() or len(p) > 5 for p in parts):
        raise LinkFormatError("ct must be content-format numbers separated by spaces")
    cts = tuple(int(p) for p in parts)
    if any(c > 65535 for c in cts):
        raise LinkFormatError("ct must be content-format numbers separated by spaces")
    return cts


def parse_object_list(data: str | bytes) -> ObjectList:
    """The Register/Update payload. Strict: every link must be an object or instance path
    under the root; at most one ``rt="oma.lwm2m"`` root link; no duplicates."""
    links = parse_links(data)
    root = "/"
    cts: tuple[int, ...] = ()
    roots = [link for link in links if link.param("rt") == LWM2M_RT]
    if len(roots) > 1:
        raise LinkFormatError('more than one rt="oma.lwm2m" link')
    if roots:
        root_link = roots[0]
        target = root_link.target
        if target != "/":
            if not target.startswith("/") or target.endswith("/"):
                raise LinkFormatError("the LwM2M root path must be absolute, e.g. </lwm2m>")
            if _path_ids(target, "") is not None:
                raise LinkFormatError("the LwM2M root path must not be an object path")
        root = target
        ct = root_link.param("ct")
        if ct is not None:
            cts = _content_formats(ct)
    prefix = "" if root == "/" else root
    objects: dict[tuple[int, int | None], ObjectLink] = {}
    for n, link in enumerate(links):
        if roots and link is roots[0]:
            continue
        ids = _path_ids(link.target, prefix)
        if ids is None or not 1 <= len(ids) <= 2:
            raise LinkFormatError(f"link {n + 1} is not an object or object instance path")
        ver = link.param("ver")
        if ver is not None and not _VERSION_RE.fullmatch(ver):
            raise LinkFormatError(f"link {n + 1} has a ver that is not like 1.1")
        key = (ids[0], ids[1] if len(ids) == 2 else None)
        if key in objects:
            raise LinkFormatError(f"link {n + 1} repeats an object path")
        if ids[0] in _NOT_REGISTERED:
            continue
        objects[key] = ObjectLink(key[0], key[1], ver)
    return ObjectList(tuple(objects.values()), root, cts)


__all__ = [
    "CF_LINK_FORMAT",
    "LWM2M_RT",
    "Link",
    "LinkFormatError",
    "ObjectLink",
    "ObjectList",
    "parse_links",
    "parse_object_list",
    "serialize_links",
]
