"""The DICOM node's settings: what `pneumoscan dicom-node` can be told, with its defaults in one
place. Standard library and `core` only, so the command line reads the defaults from here
without loading pynetdicom or the model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.core.errors import PneumoscanError
from pneumoscan.core.images import MAX_IMAGE_PIXELS

# Films one worker predicts in one model run (when that many wait), and the most bytes of film
# they may hold in memory together.
BATCH_SIZE = 8
BATCH_BYTES = 64 * 1024 * 1024


def default_workers() -> int:
    """Prediction workers: two where two cores are usable (one runs the model while the other
    builds and writes the last batch's objects), one on a single core."""
    from pneumoscan.core.hardware import usable_cpus

    return min(2, usable_cpus())


@dataclass(frozen=True)
class NodeSettings:
    spool: Path
    ae_title: str = "PNEUMOSCAN"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_aet: tuple[str, ...] = ()
    queue_size: int = 16
    queue_wait_s: float = 10.0
    workers: int = field(default_factory=lambda: default_workers())
    batch_size: int = BATCH_SIZE
    max_pixels: int = MAX_IMAGE_PIXELS
    max_message_mb: float = 512.0
    max_associations: int = 10
    indeterminate_margin: float = 0.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    drain_s: float = 20.0
    max_attempts: int = 5  # unforeseen delivery errors of one result folder before failed/
    group_readable: bool = False  # spool files 0640 and folders 0750 instead of 0600 and 0700
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    metrics_port: int | None = None  # Prometheus /metrics on the node's host, this port

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title.strip()) <= 16:
            raise PneumoscanError(f"--ae-title {self.ae_title!r}: give 1 to 16 characters.")
        if self.queue_size < 1 or self.workers < 1 or self.batch_size < 1:
            raise PneumoscanError("--queue, --workers and --batch: give 1 or more.")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PneumoscanError("--tls-cert and --tls-key go together: give both, or neither.")
        if self.tls_ca is not None and self.tls_cert is None:
            raise PneumoscanError("--tls-ca checks the callers' certificates: give --tls-cert too.")
        for entry in self.allow_aet:
            title, _, peer = entry.partition("@")
            if not 0 < len(title.strip()) <= 16 or ("@" in entry and not peer.strip()):
                raise PneumoscanError(
                    f"--allow-aet {entry!r}: give an AE title of 1 to 16 characters, or "
                    "AET@HOST to accept it only from that IP address."
                )

    def peer_refusal(self, ae_title: str, address: str) -> str | None:
        """Why --allow-aet refuses this calling AE title from this address; None when allowed."""
        if not self.allow_aet:
            return None
        title = ae_title.strip()
        hosts = set()
        for entry in self.allow_aet:
            allowed, _, host = entry.partition("@")
            if allowed.strip() == title:
                if not host:
                    return None
                hosts.add(host.strip())
        if not hosts:
            return "not in --allow-aet"
        if address in hosts:
            return None
        return f"--allow-aet allows it only from {', '.join(sorted(hosts))}"

    def ssl_context(self) -> ssl.SSLContext | None:  # noqa: F821 (ssl is imported when used)
        """The server side of TLS; with `tls_ca`, callers must show a certificate it signed."""
        if self.tls_cert is None:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as error:
            raise PneumoscanError(
                f"--tls-cert/--tls-key/--tls-ca: cannot load them ({error}); give PEM files."
            ) from None
        return context
