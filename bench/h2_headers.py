"""CPU per request h2 spends on an APNs-like request's headers, with h2's default
configuration, with ours (delivery/h2client.py `client_config`), and with ours and our header
encoder (delivery/header_encoder.py). No network.

    .venv/bin/python bench/h2_headers.py
"""

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.h2client import client_config
from delivery.header_encoder import Encoder

REQUESTS = 5000
JWT = "bearer " + "e" * 300  # an ES256 provider token is about this long


def microseconds_per_request(config: H2Configuration, *, our_encoder: bool = False) -> float:
    connection = H2Connection(config)
    if our_encoder:
        connection.encoder = Encoder()  # type: ignore[assignment]
    connection.initiate_connection()
    connection.data_to_send()
    started = time.perf_counter()
    for _ in range(REQUESTS):
        stream_id = connection.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/3/device/" + "ab" * 32),
            ("host", "api.push.apple.com"),
            ("apns-id", str(uuid.uuid4())),
            ("apns-topic", "org.zulip.Zulip"),
            ("apns-expiration", "1700000000"),
            ("apns-priority", "10"),
            ("apns-push-type", "alert"),
            ("authorization", JWT),
        ]
        connection.send_headers(stream_id, headers, end_stream=True)
        connection.data_to_send()
        connection.streams.pop(stream_id, None)  # as if answered: stay under the stream limit
    return (time.perf_counter() - started) / REQUESTS * 1e6


def main() -> None:
    configs: dict[str, tuple[Callable[[], H2Configuration], bool]] = {
        "h2 defaults": (lambda: H2Configuration(client_side=True), False),
        "ours (outbound checks off)": (client_config, False),
        "ours and our header encoder": (client_config, True),
    }
    for name, (make, encoder) in configs.items():
        runs = [microseconds_per_request(make(), our_encoder=encoder) for _ in range(5)]
        print(f"{name}: median {statistics.median(runs):.0f} us per request ({REQUESTS} x 5)")


if __name__ == "__main__":
    main()
