"""`pneumoscan dicom-node`: a DICOM C-STORE SCP that predicts on chest films and sends results back.

An archive (or a modality) routes chest films to the node by C-STORE; for each film the node
writes a TID 1500 SR and a heatmap Secondary Capture into the film's study and sends them to the
archive by C-STORE (`--send-to`) or STOW-RS (`--stow`), or into a folder (`--out`).

How a film travels, and why nothing is lost:

1. **Admission** (the association's thread). The film's SOP class must be CR or DX (for
   presentation or processing; DR films are DX objects) and match the presentation context, its
   dataset must parse and hold the UIDs, the patient and study attributes its results copy
   (`RESULT_HEADER`, possibly empty) and pixels of one frame within `max_pixels`, and there
   must be room in the queue (`queue_size` films waiting; a full queue holds the answer for up to
   `queue_wait_s`, which slows the sender down, then refuses with 0xA700 so it retries later). The
   film is written to the spool's inbox, atomically, before the C-STORE is answered with success.
   A message larger than `max_message_mb` aborts its association (DIMSE cannot answer mid-message).
2. **Prediction** (`workers` threads, one ONNX Runtime model): a worker takes the films waiting,
   up to `batch_size`, and runs the model once over them; each film's SR and SC are committed to
   the outbox, then the film leaves the inbox. A film that cannot be read gets an SR that says no
   result was produced and why, as does one the gate refuses.
   A film the predictor cannot read goes to `failed/` with its reason; an error of the disk
   (ENOSPC, EIO while writing the results) keeps the film in the inbox, retried later.
3. **Delivery** (one courier thread): each destination gets each result folder (a C-STORE
   destination on one association kept open across a burst, released when idle); a destination
   that is down or busy is retried with exponential backoff (2 s doubling to `retry_max_s`) while
   the results wait on disk; a result folder the archive refuses for good, or whose files cannot
   be read, goes to `failed/` at once with its reason, and one that fails `max_attempts` times in
   a way nobody foresaw goes there too, so the results behind it keep flowing.

No exception ends a worker or the courier: each is logged and the loop goes on. A watchdog
checks that they are alive; if one has died anyway, the node refuses new films (0xA700, so the
sender keeps them) and exits with status 1, for its supervisor to restart it.

On SIGTERM or SIGINT the node stops accepting associations, lets those in progress finish (up to
`drain_s`), finishes the predictions under way and stops; what it holds stays in the spool and the
next start predicts and delivers it. Logs name films by their spool name and the calling AE title,
never by a patient field or a UID from the film.
"""

from __future__ import annotations

import datetime
import logging
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.core.errors import PneumoscanError
from pneumoscan.dicom.delivery import SENT_META, DeliveryError, no_delay
from pneumoscan.dicom.producer import Producer
from pneumoscan.dicom.report_templates import CaptureTemplates, ReportTemplates
from pneumoscan.dicom.results import REQUIRED_UIDS, encoded_result_objects, predict_films
from pneumoscan.dicom.settings import BATCH_BYTES, NodeSettings
from pneumoscan.dicom.spool import FILM_SUFFIX, Spool
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.runtime.predict import Result

logger = logging.getLogger(__name__)

# The image storage SOP classes the node takes: chest radiographs, as CR or DX objects.
ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
}
VERIFICATION = "1.2.840.10008.1.1"

# C-STORE statuses the node answers with (PS3.4 Annex B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # refused: the queue is full, the frame too large, the disk full
DOES_NOT_MATCH = 0xA900  # the dataset is not its context's SOP class, or lacks what it needs
CANNOT_UNDERSTAND = 0xC000  # the dataset cannot be parsed
NOT_SUPPORTED = 0x0122  # refused: the dataset is of a SOP class the node does not take

# Seconds a new connection has to send its A-ASSOCIATE request: silent sockets must not hold the
# association slots (`max_associations`) for long.
ASSOCIATION_TIMEOUT_S = 10

# Header attributes the SR and SC copy from the film (Patient and General Study modules, type 2:
# present, possibly empty); a film without them is refused at admission, not failed later.
RESULT_HEADER = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)


@dataclass
class Counts:
    """What the node has done since it started (logged at shutdown, read by the tests)."""

    received: int = 0
    refused: int = 0
    predicted: int = 0
    delivered: int = 0
    failed: int = 0
    retries: int = 0  # delivery rounds to a destination scheduled again after an error
    statuses: dict[int, int] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, label) -> films
    # Called with each delivered film's seconds from receipt (`--metrics-port`'s histogram).
    on_delivered: Callable[[float], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def predicted_as(self, status: str, label: str) -> None:
        with self._lock:
            self.predicted += 1
            self.outcomes[status, label] = self.outcomes.get((status, label), 0) + 1

    def delivered_after(self, seconds: float | None) -> None:
        self.add("delivered")
        if seconds is not None and self.on_delivered is not None:
            self.on_delivered(seconds)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def answered(self, code: int) -> None:
        with self._lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1
            if code == SUCCESS:
                self.received += 1
            else:
                self.refused += 1


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes first, then the compressed ones this pydicom can decode. Deflated
    Explicit VR is not offered: pynetdicom would inflate it whole on the association's thread,
    before any size check (a 1 MB deflate bomb is 1 GB of memory)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    candidates = [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEGLosslessSV1,
        JPEGLossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLSNearLossless,
        JPEG2000,
    ]
    usable = []
    for uid in candidates:
        try:
            if get_decoder(uid).is_available:
                usable.append(str(uid))
        except (NotImplementedError, ValueError):
            continue
    return usable


def _is_compressed(transfer_syntax: str) -> bool:
    from pydicom.uid import UID

    return UID(transfer_syntax).is_compressed


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO
    return status


class DicomNode:
    """The SCP, its workers and its courier. `start()` returns once it listens; `stop()` drains."""

    def __init__(self, runtime: OnnxModel, destinations: list, settings: NodeSettings) -> None:
        if not destinations:
            raise PneumoscanError(
                "dicom-node needs somewhere to send results: give --send-to HOST:PORT:AET, "
                "--stow URL or --out DIR."
            )
        self.runtime = runtime
        self.destinations = destinations
        self.settings = settings
        self.producer = Producer.from_runtime(runtime, settings.indeterminate_margin)
        # SRs and heatmap captures filled from a template per shape
        self.reports = ReportTemplates(self.producer)
        self.captures = CaptureTemplates(self.producer)
        self.spool = Spool(settings.spool, settings.group_readable)
        self.counts = Counts()
        self._films: deque[Path] = deque()
        self._pending = 0  # films admitted and not yet predicted (waiting or under way)
        self._queue = threading.Condition()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._broken = threading.Event()  # a worker or the courier has died: refuse new films
        self._attempts: dict[Path, int] = {}  # films whose prediction failed in an unforeseen way
        self._courier = Courier(self.spool, destinations, settings, self.counts)
        self._metrics_server = None  # --metrics-port's HTTP server
        self._server = None
        self._message_bytes: dict[int, int] = {}

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom import _config as pynetdicom_config

        pynetdicom_config.LOG_HANDLER_LEVEL = "none"  # its debug dumps would print datasets
        tls = self.settings.ssl_context()  # a bad certificate stops us before anything starts
        backlog = self.spool.films()
        with self._queue:
            self._films.extend(backlog)
            self._pending = len(backlog)
        waiting = len(self.spool.jobs())
        if backlog or waiting:
            logger.info(
                "spool %s: %d film(s) to predict and %d result(s) to deliver from an earlier run",
                self.settings.spool,
                len(backlog),
                waiting,
            )
        for index in range(self.settings.workers):
            worker = threading.Thread(target=self._work, name=f"predict-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._courier.start()
        if self.settings.metrics_port is not None:
            from pneumoscan.dicom.metrics import NodeMetrics

            metrics = NodeMetrics()
            self.counts.on_delivered = metrics.latency.observe
            self._metrics_server = metrics.serve(
                self, self.settings.host, self.settings.metrics_port
            )

        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.dimse_timeout = ae.network_timeout = 60
        ae.acse_timeout = ASSOCIATION_TIMEOUT_S  # the A-ASSOCIATE request must come quickly
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_CONN_OPEN, no_delay),
        ]
        try:
            self._server = ae.start_server(
                (self.settings.host, self.settings.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=tls,
            )
        except OSError as error:
            self._stop_threads()
            raise PneumoscanError(
                f"cannot listen on {self.settings.host}:{self.settings.port} "
                f"({error.strerror or error}); choose another --port or stop what uses it."
            ) from None
        self._ae = ae
        logger.info(
            "%s listening on %s:%d%s; results to %s. %s",
            self.settings.ae_title,
            self.settings.host,
            self.settings.port,
            " (TLS)" if self.settings.tls_cert else "",
            ", ".join(str(destination) for destination in self.destinations),
            self.producer.model_title,
        )

    def stop(self) -> None:
        """Stop listening, let associations in progress finish, finish predictions under way."""
        if self._server is not None:
            self._server.shutdown()  # no new associations; the listening socket closes
            deadline = time.monotonic() + self.settings.drain_s
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for association in self._ae.active_associations:
                association.abort()  # an unanswered C-STORE is the sender's to retry
            self._server = None
        self._stop_threads()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        self.spool.close()
        counts = self.counts
        logger.info(
            "stopped: %d film(s) received, %d refused, %d predicted, %d delivered, %d failed; "
            "%d film(s) and %d result(s) stay in %s for the next start",
            counts.received,
            counts.refused,
            counts.predicted,
            counts.delivered,
            counts.failed,
            len(self.spool.films()),
            len(self.spool.jobs()),
            self.settings.spool,
        )

    def _stop_threads(self) -> None:
        self._stopping.set()
        with self._queue:
            self._queue.notify_all()
        for worker in self._workers:
            worker.join()
        self._courier.stop()

    def serve_forever(self, watch_s: float = 1.0) -> int:
        """Start, then run until SIGTERM or SIGINT, then stop cleanly: exit status 0. Stops too,
        with status 1, when the watchdog finds a worker or the courier dead."""
        stop = threading.Event()
        previous = {
            signum: signal.signal(signum, lambda *_: stop.set())
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not stop.wait(watch_s):
                if self.check_threads():
                    break
            if not self._broken.is_set():
                logger.info("stopping: finishing what is under way")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()
        return 1 if self._broken.is_set() else 0

    def check_threads(self) -> list[str]:
        """The watchdog: the names of dead workers or a dead courier. Any makes the node refuse
        new films from now on (what it holds stays in the spool for the next start)."""
        threads = [*self._workers, self._courier]
        dead = [thread.name for thread in threads if not thread.is_alive()]
        if dead and not self._broken.is_set() and not self._stopping.is_set():
            self._broken.set()
            logger.critical(
                "thread(s) %s died: refusing new films and exiting with status 1, so the "
                "supervisor restarts the node; the spool keeps what it holds",
                ", ".join(dead),
            )
        return dead

    # --- the SCP -------------------------------------------------------------------------

    def _on_accepted(self, event) -> None:
        logger.debug("association from %s accepted", event.assoc.requestor.ae_title)

    def _on_requested(self, event) -> None:
        """Refuse a calling AE title that --allow-aet does not allow from the caller's address."""
        requestor = event.assoc.requestor
        title = str(requestor.primitive.calling_ae_title).strip()
        reason = self.settings.peer_refusal(title, requestor.address)
        if reason is None:
            return
        logger.warning(
            "association from AE %r at %s refused (%s)", title, requestor.address, reason
        )
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # calling AE title not recognised
        event.assoc.kill()

    def _on_rejected(self, event) -> None:
        """pynetdicom's own refusal: every association slot is taken."""
        logger.warning(
            "association from AE %r at %s refused (%d associations already open, "
            "--max-associations); connections that send nothing are closed after %d s",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
            self.settings.max_associations,
            ASSOCIATION_TIMEOUT_S,
        )

    def _on_close(self, event) -> None:
        self._message_bytes.pop(id(event.assoc), None)

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_pdu(self, event) -> None:
        """Count each message's dataset bytes; abort an association whose message is too large
        to hold (DIMSE has no way to answer before the whole message has arrived)."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        total = self._message_bytes.get(key, 0)
        for item in items:
            data = item.presentation_data_value or b""
            if data and data[0] & 0x01:  # a command fragment: a new message starts
                total = 0
            else:
                total += max(len(data) - 1, 0)
        self._message_bytes[key] = total
        if total > self.settings.max_message_mb * 1024 * 1024:
            self._message_bytes.pop(key, None)
            logger.warning(
                "association from %s aborted: a message over %g MB",
                event.assoc.requestor.ae_title,
                self.settings.max_message_mb,
            )
            event.assoc.abort(block=False)

    def _on_store(self, event):
        self._message_bytes.pop(id(event.assoc), None)
        caller = event.assoc.requestor.ae_title
        if self._broken.is_set():  # no film is acknowledged that nothing would predict
            code, comment = OUT_OF_RESOURCES, "node restarting; retry later"
        else:
            code, comment = self._admit(event)
        self.counts.answered(code)
        if code != SUCCESS:
            logger.warning("C-STORE from %s refused with 0x%04X: %s", caller, code, comment)
            return _status(code, comment)
        return SUCCESS

    def _admit(self, event) -> tuple[int, str]:
        """(status, comment): SUCCESS once the film is on disk and queued."""
        sop_class = str(event.context.abstract_syntax)
        if sop_class not in ACCEPTED_SOP_CLASSES:
            return NOT_SUPPORTED, "pneumoscan takes CR and DX chest films only"
        try:
            dataset = event.dataset
            for _ in dataset:  # parse every top-level element now, not later in a worker
                pass
            claimed = str(dataset.get("SOPClassUID", ""))
            rows = int(dataset.get("Rows") or 0)
            columns = int(dataset.get("Columns") or 0)
            frames = int(dataset.get("NumberOfFrames") or 1)
            samples = int(dataset.get("SamplesPerPixel") or 1)
            bits = int(dataset.get("BitsAllocated") or 0)
            missing = [keyword for keyword in REQUIRED_UIDS if not dataset.get(keyword)]
            missing += [keyword for keyword in RESULT_HEADER if keyword not in dataset]
            has_pixels = "PixelData" in dataset
            pixel_bytes = len(dataset.PixelData) if has_pixels else 0
        except Exception:  # pydicom raises many types for broken datasets
            return CANNOT_UNDERSTAND, "the dataset could not be parsed"
        if claimed and claimed not in ACCEPTED_SOP_CLASSES:  # e.g. a CT image in a DX context
            return NOT_SUPPORTED, "pneumoscan takes CR and DX chest films only"
        if claimed != sop_class or claimed != str(event.request.AffectedSOPClassUID):
            return DOES_NOT_MATCH, "SOP Class UID differs from the presentation context"
        if missing or not has_pixels:
            return DOES_NOT_MATCH, f"no {', '.join(missing) or 'PixelData'} in the dataset"
        if rows <= 0 or columns <= 0 or frames <= 0 or samples <= 0:
            return DOES_NOT_MATCH, "Rows, Columns or frames are not positive"
        if rows * columns * frames * samples > self.settings.max_pixels:
            return OUT_OF_RESOURCES, f"frame over the {self.settings.max_pixels:,} px limit"
        native = not _is_compressed(event.context.transfer_syntax)
        if native and bits >= 8 and pixel_bytes < rows * columns * frames * samples * (bits // 8):
            return DOES_NOT_MATCH, "PixelData shorter than Rows x Columns need"
        if not self._reserve():
            return OUT_OF_RESOURCES, "queue full; retry later"
        name = self.spool.new_name()
        try:
            film = self.spool.admit(name, event.encoded_dataset())
        except OSError as error:
            self._release()
            logger.error("cannot spool a film (%s)", error.strerror or type(error).__name__)
            return OUT_OF_RESOURCES, "cannot write the spool; retry later"
        with self._queue:
            self._films.append(film)
            self._queue.notify_all()
        logger.info(
            "film %s received from %s (%s)",
            name,
            event.assoc.requestor.ae_title,
            ACCEPTED_SOP_CLASSES[sop_class],
        )
        return SUCCESS, ""

    def _reserve(self) -> bool:
        """A place in the queue, waiting up to queue_wait_s for one (back-pressure)."""
        deadline = time.monotonic() + self.settings.queue_wait_s
        with self._queue:
            while self._pending >= self.settings.queue_size:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    return False
                self._queue.wait(left)
            self._pending += 1
            return True

    def _release(self) -> None:
        with self._queue:
            self._pending -= 1
            self._queue.notify_all()

    # --- the workers ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._queue:
                while not self._films and not self._stopping.is_set():
                    self._queue.wait()
                if self._stopping.is_set():
                    return
                films = self._take_batch()
            try:
                done = self._predict(films)
            except Exception:  # nothing may end the worker: log, keep the films, go on
                for film in films:
                    logger.exception("film %s: unexpected error; kept for a retry", film.name)
                done = [self._count_attempt(film) for film in films]
            kept = [film for film, finished in zip(films, done) if not finished]
            for _ in range(len(films) - len(kept)):
                self._release()
            if kept:
                self._stopping.wait(self.settings.retry_base_s)  # e.g. a full disk: let it pass
                with self._queue:
                    self._films.extend(kept)  # still pending: their places in the queue are kept
                    self._queue.notify_all()

    def _take_batch(self) -> list[Path]:
        """The films waiting, oldest first, up to `batch_size` and `BATCH_BYTES` (at least one);
        called with the queue's lock held."""
        films = [self._films.popleft()]
        total = _size(films[0])
        while self._films and len(films) < self.settings.batch_size:
            total += _size(self._films[0])
            if total > BATCH_BYTES:
                break
            films.append(self._films.popleft())
        return films

    def _count_attempt(self, film: Path) -> bool:
        """True once a film has failed `max_attempts` times: it leaves the queue (it stays in
        the inbox, or in failed/ if it could be moved there)."""
        self._attempts[film] = self._attempts.get(film, 0) + 1
        if self._attempts[film] < self.settings.max_attempts:
            return False
        self._attempts.pop(film, None)
        try:
            self.spool.fail(film, f"film {film.name}: failed {self.settings.max_attempts} times")
            self.counts.add("failed")
        except OSError as error:
            logger.error("film %s: cannot move it to failed/ (%s)", film.name, error)
        return True

    def _predict(self, films: list[Path]) -> list[bool]:
        """For each film, True when it is done with (results committed, or the film in failed/),
        False when the disk failed us (the film stays in the inbox for a retry). The model runs
        once over the films that could be read."""
        import pydicom

        done: dict[Path, bool] = {}
        readable, datasets = [], []
        for film in films:
            if not film.exists():  # already committed (or removed by hand)
                done[film] = True
                continue
            try:
                datasets.append(pydicom.dcmread(film))
            except Exception as error:  # a film that breaks the pipeline must not stop the node
                done[film] = self._fail_film(film, error)
                continue
            readable.append(film)
        outcomes = self._outcomes(datasets, [_label(film) for film in readable])
        del datasets  # the pixels are done with; the objects need the header only
        for film, outcome in zip(readable, outcomes):
            done[film] = self._finish(film, outcome)
        return [done[film] for film in films]

    def _outcomes(self, datasets: list, labels: list[str]) -> list[Result | Exception]:
        """`predict_films`; should the batch raise, each film again alone, so the exception
        stays with the film that raised it."""
        try:
            return predict_films(
                self.runtime,
                datasets,
                labels,
                self.settings.indeterminate_margin,
                self.settings.max_pixels,
            )
        except Exception as error:  # a film that breaks the predictor must not stop the node
            if len(datasets) == 1:
                return [error]
            return [self._outcomes([one], [label])[0] for one, label in zip(datasets, labels)]

    def _fail_film(self, film: Path, error: Exception) -> bool:
        """The film to failed/ with its reason: True, or False when even that failed (kept)."""
        label = _label(film)
        reason = f"{label}: no result could be made ({type(error).__name__})"
        logger.error("%s; the film is kept in %s", reason, self.spool.failed)
        try:
            self.spool.fail(film, reason)
        except OSError as disk:
            logger.error("%s: cannot move it to failed/ (%s); retried later", label, disk)
            return False
        self.counts.add("failed")
        return True

    def _finish(self, film: Path, outcome: Result | Exception) -> bool:
        """The film's result objects committed to the outbox (see `_predict`)."""
        import pydicom

        label = _label(film)
        if isinstance(outcome, Exception):
            return self._fail_film(film, outcome)
        result = outcome
        try:
            header = pydicom.dcmread(film, stop_before_pixels=True)
            objects = self.objects(header, result)
            record = {
                "received": received_at(film.name.removesuffix(FILM_SUFFIX)),
                "predicted": time.time(),
                "status": result.status,
                "label": result.label,
            }
        except Exception as error:  # a film that breaks the pipeline must not stop the node
            return self._fail_film(film, error)
        try:
            self.spool.commit(film, objects, record)
        except OSError as error:  # the disk, not the film: never failed/, try again later
            logger.error(
                "%s: cannot write its results (%s); the film stays in the inbox for a retry",
                label,
                error.strerror or type(error).__name__,
            )
            return False
        self._attempts.pop(film, None)
        self.counts.predicted_as(result.status, result.label or "")
        logger.info(
            "%s: %s%s; %d object(s) queued for delivery",
            label,
            result.label or result.status,
            "" if not result.probabilities else f" ({_probabilities(result)})",
            len(objects),
        )
        self._courier.notify()
        return True

    def objects(self, header, result: Result) -> list[bytes]:
        """The film's SR (and SC) as Part 10 bytes: see `results.encoded_result_objects`."""
        return encoded_result_objects(header, result, self.reports, self.captures)


def _label(film: Path) -> str:
    return f"film {film.name.removesuffix(FILM_SUFFIX)}"


def _size(film: Path) -> int:
    try:
        return film.stat().st_size
    except OSError:
        return 0


def _probabilities(result: Result) -> str:
    return ", ".join(f"P({name}) {value:.3f}" for name, value in result.probabilities.items())


def received_at(name: str) -> float:
    """When a film arrived, from its spool name (UTC seconds since the epoch)."""
    try:
        stamp = datetime.datetime.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%S.%f")
    except ValueError:
        return time.time()
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


class Courier(threading.Thread):
    """Delivers the outbox to every destination, oldest first; a destination that fails for a
    reason that may pass (down, busy) waits with exponential backoff, and the rest wait on disk."""

    def __init__(self, spool: Spool, destinations: list, settings: NodeSettings, counts: Counts):
        super().__init__(name="courier", daemon=True)
        self.spool = spool
        self.destinations = destinations
        self.settings = settings
        self.counts = counts
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._failures = {destination.key: 0 for destination in destinations}
        self._retry_at = {destination.key: 0.0 for destination in destinations}
        self._attempts: dict[str, int] = {}  # unforeseen delivery errors, per result folder

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._deliver_due()
                pending = bool(self.spool.jobs())
            except Exception:  # e.g. the disk: nothing may end deliveries; log, wait, go on
                logger.exception("delivery round failed; results wait in the spool")
                self._wake.wait(self.settings.retry_base_s)
                continue
            now = time.monotonic()
            waiting = [at - now for key, at in self._retry_at.items() if self._failures[key]]
            # 5 s: also picks up results of an earlier run
            timeout = max(0.05, min(waiting)) if pending and waiting else 5.0
            self._wake.wait(min(timeout, self._release_idle()))
        self._release_idle(force=True)

    def _release_idle(self, force: bool = False) -> float:
        """Release the associations idle for their interval (all with `force`); the seconds
        until the next one is due."""
        due = [5.0]
        for destination in self.destinations:
            if not hasattr(destination, "release_idle"):
                continue
            try:
                left = destination.release_idle(force=force)
            except Exception:  # a release that fails leaves nothing to deliver behind
                logger.warning("%s: the idle association could not be released", destination)
                continue
            if left is not None:
                due.append(max(0.05, left))
        return min(due)

    def _deliver_due(self) -> None:
        for destination in self.destinations:
            key = destination.key
            if time.monotonic() < self._retry_at[key]:
                continue
            for job in self.spool.jobs():
                if self._stopping.is_set():
                    return
                if self.spool.is_sent(job, key) or not job.exists():
                    continue
                objects = self.spool.objects(job)
                unreadable = _unreadable(objects)
                if unreadable:  # the job itself is broken: no destination can ever take it
                    self._fail(job, unreadable)
                    continue
                try:
                    destination.send(objects)
                except DeliveryError as error:
                    if error.retry:
                        self._back_off(destination, error)
                        break
                    self._fail(job, f"{error} (refused for good)")
                    continue
                except Exception as error:  # a library's surprise must not end deliveries
                    attempts = self._attempts.get(job.name, 0) + 1
                    self._attempts[job.name] = attempts
                    if attempts >= self.settings.max_attempts:
                        self._fail(
                            job,
                            f"{destination}: {type(error).__name__}, {attempts} times",
                        )
                        continue
                    self._back_off(
                        destination,
                        DeliveryError(f"{destination}: {type(error).__name__}", retry=True),
                    )
                    break
                self._attempts.pop(job.name, None)
                if self._failures[key]:
                    logger.info("%s is back: delivering what waited", destination)
                self._failures[key] = 0
                self._finish_if_done(job, key)

    def _fail(self, job: Path, reason: str) -> None:
        """The job to failed/ with its reason, now: the results behind it keep flowing."""
        logger.error("%s: %s; kept in %s", job.name, reason, self.spool.failed)
        self.spool.fail(job, reason)
        self._attempts.pop(job.name, None)
        self.counts.add("failed")

    def _finish_if_done(self, job: Path, key: str) -> None:
        """`key` has stored the job: mark it sent there, or, when every other destination has
        stored it too, remove the job at once (no mark to write first)."""
        others = [d.key for d in self.destinations if d.key != key]
        if not all(self.spool.is_sent(job, other) for other in others):
            self.spool.mark_sent(job, key)
        else:
            record = self.spool.record(job)
            self.spool.finish(job)
            received = record.get("received")
            self.counts.delivered_after(None if received is None else time.time() - received)
            latency = "" if received is None else f", {time.time() - received:.2f} s after receipt"
            logger.info("film %s: results delivered%s", job.name, latency)

    def _back_off(self, destination, error: DeliveryError) -> None:
        key = destination.key
        self._failures[key] += 1
        delay = min(
            self.settings.retry_max_s, self.settings.retry_base_s * 2 ** (self._failures[key] - 1)
        )
        delay *= random.uniform(0.8, 1.2)  # several nodes must not retry in step
        self._retry_at[key] = time.monotonic() + delay
        self.counts.add("retries")
        logger.warning(
            "%s; %d result(s) wait in the spool, next try in %.0f s",
            error,
            len(self.spool.jobs()),
            delay,
        )


def _unreadable(objects: list[Path]) -> str:
    """Why a result folder cannot be sent by anyone (no objects, or one that is not a DICOM
    file with the file meta a C-STORE is sent from), or "" when it can. Only the file meta is
    read: the objects were written whole and fsynced by this node, and parsing each SR again
    cost more than building it."""
    from pydicom.filereader import read_file_meta_info

    if not objects:
        return "no result objects in the folder"
    for path in objects:
        try:
            meta = read_file_meta_info(path)
        except Exception as error:  # pydicom raises many types for a corrupt file
            return f"{path.name} cannot be read ({type(error).__name__})"
        missing = [keyword for keyword in SENT_META if not meta.get(keyword)]
        if missing:
            return f"{path.name} cannot be read (no {', '.join(missing)})"
    return ""
