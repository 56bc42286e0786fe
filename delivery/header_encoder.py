"""HPACK (RFC 7541) for our own upstream requests: the header encoder of every h2 connection.

Every request to APNs or FCM repeats the same few header values (the authorization token,
the topic, the authority, the push type) and adds one or two that change each time (the
device's `:path`, `content-length`). hpack's general-purpose `Encoder` searches its tables
and Huffman-codes every header of every request: measured in-process with cProfile on a
one-device notify, a sixth of the web's time went to it (bench/h2_headers.py compares).

This encoder knows which headers repeat. Their values go into the dynamic table the first
time and are one byte (an index) after that; every other header is a literal that is never
added, so the per-request values never evict the repeating ones. Nothing is Huffman-coded:
on a loopback or a data-centre link the bytes it saves cost more CPU than they are worth.
The output is ordinary HPACK that any decoder reads (the tests decode it with hpack's).
"""

from collections import deque
from collections.abc import Iterable

from hpack.table import HeaderTable

# The repeating headers of our requests; anything else is sent as a literal, never indexed.
REPEATING = frozenset(
    {
        b":authority",
        b"authorization",
        b"apns-topic",
        b"apns-push-type",
        b"apns-priority",
        b"content-type",
        b"user-agent",
    }
)

# RFC 7541 appendix A: a full match is one byte; a name match saves the name's bytes.
_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FULL.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)

_DEFAULT_TABLE_SIZE = 4096
_ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1
_FIRST_DYNAMIC_INDEX = len(HeaderTable.STATIC_TABLE) + 1


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 section 5.1: `value` in an N-bit prefix after `flags`' high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0x00) + value  # H = 0: not Huffman-coded


class Encoder:
    """What h2 needs of an encoder: `encode(headers)` and a settable `header_table_size`
    (the peer's SETTINGS_HEADER_TABLE_SIZE)."""

    def __init__(self) -> None:
        self._max_size = _DEFAULT_TABLE_SIZE
        self._size = 0
        # Dynamic table entries, oldest first, with their insertion numbers.
        self._entries: deque[tuple[tuple[bytes, bytes], int]] = deque()
        self._inserted = 0
        self._numbers: dict[tuple[bytes, bytes], int] = {}
        self._resize: int | None = None
        self._literal_names: dict[bytes, bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # A peer may allow more than the default; this table stays at the default, which
        # needs no signal. Less must be signalled at the start of the next header block.
        size = min(value, _DEFAULT_TABLE_SIZE)
        if size != self._max_size:
            self._max_size = size
            self._evict(0)
            self._resize = size

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = False) -> bytes:
        out = bytearray()
        if self._resize is not None:
            out += _integer(self._resize, 5, 0x20)
            self._resize = None
        for header in headers:
            name, value = bytes(header[0]), bytes(header[1])
            key = (name, value)
            index = _STATIC_FULL.get(key)
            if index is not None:
                out += _integer(index, 7, 0x80)
                continue
            if name in REPEATING:
                number = self._numbers.get(key)
                if number is not None:
                    out += _integer(_FIRST_DYNAMIC_INDEX + self._inserted - number, 7, 0x80)
                    continue
                if self._add(key):
                    name_index = _STATIC_NAME.get(name, 0)
                    out += _integer(name_index, 6, 0x40)  # literal with incremental indexing
                    if not name_index:
                        out += _string(name)
                    out += _string(value)
                    continue
            out += self._literal_name(name)  # literal without indexing
            out += _string(value)
        return bytes(out)

    def _literal_name(self, name: bytes) -> bytes:
        encoded = self._literal_names.get(name)
        if encoded is None:
            name_index = _STATIC_NAME.get(name, 0)
            encoded = _integer(name_index, 4, 0x00) + (b"" if name_index else _string(name))
            if len(self._literal_names) < 256:
                self._literal_names[name] = encoded
        return encoded

    def _add(self, key: tuple[bytes, bytes]) -> bool:
        size = len(key[0]) + len(key[1]) + _ENTRY_OVERHEAD
        if size > self._max_size:
            return False  # would empty the table and still not fit: sent as a literal
        self._evict(size)
        self._inserted += 1
        self._entries.append((key, self._inserted))
        self._numbers[key] = self._inserted
        self._size += size
        return True

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more bytes fit (RFC 7541 section 4.4)."""
        while self._entries and self._size + room > self._max_size:
            (name, value), number = self._entries.popleft()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
            if self._numbers.get((name, value)) == number:
                del self._numbers[(name, value)]
