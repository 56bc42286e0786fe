"""Our HPACK encoder (delivery/header_encoder.py) against hpack's decoder: whatever sequence of
header blocks and table-size changes, every block decodes to exactly the headers encoded."""

from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery.header_encoder import REPEATING, Encoder

NAMES = [
    *sorted(REPEATING),
    b":method",
    b":path",
    b":scheme",
    b"content-length",
    b"apns-id",
    b"apns-expiration",
    b"x-custom",
]
# Short values repeat (and hit the tables); long ones force evictions or do not fit at all.
values = st.one_of(
    st.sampled_from([b"", b"POST", b"https", b"/", b"10", b"alert", b"org.zulip.Zulip"]),
    st.binary(min_size=0, max_size=40),
    st.binary(min_size=1000, max_size=5000),
)
header = st.tuples(st.sampled_from(NAMES), values)
step = st.one_of(
    st.lists(header, min_size=1, max_size=12).map(lambda block: ("block", block)),
    st.sampled_from([0, 64, 256, 4096, 65536]).map(lambda size: ("size", size)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=40))
def test_every_block_decodes_to_what_was_encoded(steps: list[tuple[str, object]]) -> None:
    encoder, decoder = Encoder(), Decoder()
    decoder.max_allowed_table_size = 65536
    for kind, content in steps:
        if kind == "size":
            assert isinstance(content, int)
            # The decoder's SETTINGS_HEADER_TABLE_SIZE, as the peer announces it.
            decoder.max_allowed_table_size = content
            encoder.header_table_size = content
            continue
        assert isinstance(content, list)
        decoded = decoder.decode(encoder.encode(content), raw=True)
        assert [(bytes(n), bytes(v)) for n, v in decoded] == content


def test_a_repeating_header_costs_one_byte_after_the_first_request() -> None:
    encoder = Encoder()
    token = (b"authorization", b"bearer " + b"e" * 300)
    first = encoder.encode([token, (b":path", b"/3/device/ab")])
    second = encoder.encode([token, (b":path", b"/3/device/cd")])
    assert len(first) > 300
    assert len(second) == 1 + len(encoder.encode([(b":path", b"/3/device/ef")]))
