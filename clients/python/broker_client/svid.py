"""Client certificates as the identity (X.509-SVIDs over mutual TLS): files on disk, re-read on rotation.

An mTLS identity source has no bearer token (`token()` is ""): the certificate presented in the TLS
handshake is the identity. The client builds its HTTP connection pool from `ssl_context()` and builds
it again when `version()` changes, so an SVID rotated by spiffe-helper is used without a restart.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from broker_client.errors import IdentityUnavailable


class ClientCertificate:
    """A certificate chain file and its key file (PEM); `ca` verifies the broker (default: system CAs)."""

    def __init__(self, cert: str | os.PathLike[str], key: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None) -> None:  # fmt: skip
        self.cert = Path(cert)
        self.key = Path(key) if key is not None else None
        self.ca = Path(ca) if ca is not None else None

    def token(self) -> str:
        return ""  # no bearer token: the handshake's certificate is the identity

    def version(self) -> tuple[Any, ...]:
        """Changes whenever one of the files is replaced or rewritten."""
        stats = []
        for path in filter(None, (self.cert, self.key, self.ca)):
            try:
                info = path.stat()
                stats.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def ssl_context(self, verify: Any = None) -> ssl.SSLContext:
        """A client context presenting the certificate; the broker verified by `verify`, else `ca`."""
        if isinstance(verify, ssl.SSLContext):
            raise IdentityUnavailable("pass the broker's CA as a file path when a client certificate is used")
        cafile = verify if isinstance(verify, str | os.PathLike) else self.ca
        try:
            context = ssl.create_default_context(cafile=cafile)
            if verify is False:  # an explicit choice of the caller (tests, a broker on loopback)
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            # spiffe-helper may be between writing the certificate and its key: the caller retries later
            raise IdentityUnavailable(f"client certificate {self.cert}: {exc}") from None
        return context

    def __repr__(self) -> str:
        return f"ClientCertificate({str(self.cert)!r})"


class SvidFiles(ClientCertificate):
    """The X.509-SVID files spiffe-helper writes: svid.pem (leaf, intermediates), svid_key.pem, bundle.pem.

    bundle.pem (the trust domain's CAs) also verifies the broker's server certificate unless `verify` is given.
    """

    def __init__(self, directory: str | os.PathLike[str], cert: str = "svid.pem", key: str = "svid_key.pem",
                 bundle: str = "bundle.pem") -> None:  # fmt: skip
        folder = Path(directory)
        super().__init__(folder / cert, folder / key, folder / bundle)

    def __repr__(self) -> str:
        return f"SvidFiles({str(self.cert.parent)!r})"


def tls_source(identity: Any) -> ClientCertificate | None:
    return identity if isinstance(identity, ClientCertificate) else None
