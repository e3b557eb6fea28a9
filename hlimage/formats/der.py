"""DER (X.690), as much as PKCS#7 and X.509 structures need: encoders for the elements we build
and a strict reader for the ones we are shown.

The encoders return whole encodings (tag, length, content). The reader never trusts a length
before checking it against the bytes it has; anything it does not understand (a high tag
number, a BER indefinite length, a length of more than 4 bytes) is a FormatError.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hlimage.errors import FormatError

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_BMP_STRING = 0x1E
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
CONSTRUCTED = 0x20
CONTEXT = 0x80


# --- Encoding -------------------------------------------------------------------------------


def length(value: int) -> bytes:
    if value < 0x80:
        return bytes([value])
    encoded = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + length(len(content)) + content


def sequence(*items: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(items))


def set_of(items: Iterable[bytes]) -> bytes:
    """A SET OF: DER orders the elements by their encodings, shorter ones padded with zeros."""
    elements = list(items)
    width = max((len(e) for e in elements), default=0)

    def key(element: bytes) -> bytes:
        return element.ljust(width, b"\0")

    ordered: list[bytes] = sorted(elements, key=key)
    return tlv(TAG_SET, b"".join(ordered))


def integer(value: int) -> bytes:
    magnitude = value if value >= 0 else -value - 1
    return tlv(TAG_INTEGER, value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise ValueError(f"not an object identifier: {dotted}")
    content = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content += bytes(reversed(chunk))
    return tlv(TAG_OID, bytes(content))


def octet_string(data: bytes) -> bytes:
    return tlv(TAG_OCTET_STRING, data)


def null() -> bytes:
    return tlv(TAG_NULL, b"")


def explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context tag around a whole encoding."""
    return tlv(CONTEXT | CONSTRUCTED | number, content)


def implicit(number: int, encoding: bytes) -> bytes:
    """[number] IMPLICIT: the encoding's own tag replaced, keeping its constructed bit."""
    return bytes([CONTEXT | (encoding[0] & CONSTRUCTED) | number]) + encoding[1:]


# --- Reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One DER element: its identifier octet and its whole encoding."""

    tag: int
    raw: bytes
    header_length: int

    @property
    def content(self) -> bytes:
        return self.raw[self.header_length :]

    @property
    def constructed(self) -> bool:
        return bool(self.tag & CONSTRUCTED)

    @staticmethod
    def read(data: bytes, offset: int, end: int) -> Element:
        if offset + 2 > end:
            raise FormatError("truncated DER: an element ends early")
        tag = data[offset]
        if tag & 0x1F == 0x1F:
            raise FormatError("DER element with a high tag number (not used by Authenticode)")
        first = data[offset + 1]
        if first < 0x80:
            size, header = first, 2
        elif first == 0x80:
            raise FormatError("BER indefinite length where DER is required")
        else:
            count = first & 0x7F
            if count > 4:
                raise FormatError("DER length of more than 4 bytes")
            if offset + 2 + count > end:
                raise FormatError("truncated DER: a length ends early")
            size = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header = 2 + count
        if offset + header + size > end:
            raise FormatError("truncated DER: an element is longer than what holds it")
        return Element(tag, data[offset : offset + header + size], header)

    @classmethod
    def parse(cls, data: bytes) -> Element:
        """One element filling `data` (zero padding after it is allowed)."""
        element = cls.read(data, 0, len(data))
        if any(data[len(element.raw) :]):
            raise FormatError("junk after the DER element")
        return element

    def children(self) -> list[Element]:
        if not self.constructed:
            raise FormatError(f"DER element 0x{self.tag:02x} is primitive, expected constructed")
        items = []
        raw = self.raw
        offset = self.header_length
        while offset < len(raw):
            item = Element.read(raw, offset, len(raw))
            items.append(item)
            offset += len(item.raw)
        return items

    def expect(self, tag: int, what: str) -> Element:
        if self.tag != tag:
            raise FormatError(f"{what}: DER tag 0x{self.tag:02x} where 0x{tag:02x} belongs")
        return self

    def fields(self, what: str, minimum: int, tag: int = TAG_SEQUENCE) -> list[Element]:
        items = self.expect(tag, what).children()
        if len(items) < minimum:
            raise FormatError(f"{what}: {len(items)} fields, expected at least {minimum}")
        return items

    def oid(self, what: str) -> str:
        content = self.expect(TAG_OID, what).content
        if not content or content[-1] & 0x80:
            raise FormatError(f"{what}: malformed object identifier")
        arcs: list[int] = []
        value = 0
        for byte in content:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                arcs.append(value)
                value = 0
        first = min(arcs[0] // 40, 2)
        return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])

    def integer(self, what: str) -> int:
        content = self.expect(TAG_INTEGER, what).content
        if not content:
            raise FormatError(f"{what}: empty INTEGER")
        return int.from_bytes(content, "big", signed=True)

    def octets(self, what: str) -> bytes:
        return self.expect(TAG_OCTET_STRING, what).content
