"""A throwaway certificate authority for the loopback fakes (APNs, FCM, Zulip servers).

The bouncer trusts it through PUSH_CA_FILE, exactly as an operator would trust a proxy's CA.
"""

import os
import ssl
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import trustme


@dataclass(frozen=True)
class LoopbackTLS:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self, *, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@cache
def loopback_tls() -> LoopbackTLS:
    """One CA and one server certificate for 127.0.0.1 and localhost.

    Per process, unless FAKE_TLS_DIR names a directory: then every process that shares it
    (the benchmark's fakes, web and workers) uses the same CA.
    """
    shared = os.environ.get("FAKE_TLS_DIR")
    directory = Path(shared) if shared else Path(tempfile.mkdtemp(prefix="bouncer-tls-"))
    files = LoopbackTLS(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    if shared and files.key_file.exists():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in server.cert_chain_pems[1:]:
        with cert_file.open("ab") as f:
            f.write(extra.bytes())
    server.private_key_pem.write_to_path(str(key_file))
    return LoopbackTLS(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
