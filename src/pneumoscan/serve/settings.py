"""`pneumoscan serve`'s settings and their defaults, in one place: the CLI's options read their
defaults from here before FastAPI is imported (this module imports none of the web stack)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pneumoscan.core.hardware import usable_cpus

API_KEY_ENV = "PNEUMOSCAN_API_KEY"
SETTINGS_ENV = "PNEUMOSCAN_SERVE_SETTINGS"  # how `serve --workers N` hands settings to each worker
MB = 1024 * 1024
# Dynamic batching defaults: a batch as large as the runtime's, and a wait short next to a
# full-size film's decoding (tens of ms) and the model's run (~5 ms).
MAX_BATCH_SIZE = 16
MAX_BATCH_WAIT_MS = 2.0


@dataclass(frozen=True)
class ServeSettings:
    """Everything the server can be told; `pneumoscan serve --help` lists the same knobs."""

    models: tuple[str, ...] = ("binary", "three-class")  # the first is the default
    gate: bool = True
    threads: int | None = None  # ONNX Runtime threads per model; None: cores / parallel
    parallel: int = 1  # model runs (batches, heatmaps, batch requests) at once in this process
    # Dynamic batching: single-film requests run through the model together, up to this many,
    # the first waiting at most max_batch_wait_ms for others (1 / 0: no batching).
    max_batch_size: int = MAX_BATCH_SIZE
    max_batch_wait_ms: float = MAX_BATCH_WAIT_MS
    decode_threads: int | None = None  # threads decoding uploads; None: the usable cores
    max_upload_bytes: int = 20 * MB  # one file
    max_batch_files: int = 16
    max_batch_bytes: int = 64 * MB  # one batch request, all files together
    max_pixels: int = 30_000_000
    max_in_flight: int = 32  # admitted requests (reading, waiting or predicting); more get 503
    # Admitted requests from one client address; more get 429, so a few slow clients cannot
    # hold every admission slot.
    max_in_flight_per_client: int = 4
    memory_budget_bytes: int = 256 * MB  # uploads held in memory by all requests together
    request_timeout_s: float = 30.0
    # Bodies must arrive at least this fast on average after the first 2 s; slower get 408.
    min_upload_bytes_per_s: int = 32 * 1024
    indeterminate_margin: float = 0.0
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve needs at least one model")
        if self.parallel < 1 or self.max_in_flight < 1 or self.max_in_flight_per_client < 1:
            raise ValueError("parallel, max_in_flight and max_in_flight_per_client must be >= 1")
        from pneumoscan.runtime.predict import BATCH_SIZE

        if not 1 <= self.max_batch_size <= BATCH_SIZE:
            raise ValueError(f"max batch size must be 1 to {BATCH_SIZE} (the runtime's batch)")
        if not 0.0 <= self.max_batch_wait_ms <= 1000.0:
            raise ValueError("max batch wait must be 0 to 1000 ms")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ValueError("decode threads must be >= 1")
        if not 0.0 <= self.indeterminate_margin < 0.5:
            raise ValueError("indeterminate margin must be in [0, 0.5)")

    @classmethod
    def from_environment(cls, **overrides: Any) -> ServeSettings:
        """Settings from $PNEUMOSCAN_SERVE_SETTINGS (JSON, set by `serve --workers N`) and the API
        key from $PNEUMOSCAN_API_KEY; keyword overrides win."""
        values: dict[str, Any] = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
        values = {name: value for name, value in values.items() if name != "api_key"}
        values.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
        values.update(overrides)
        for name in ("models", "cors_origins"):
            if name in values:
                values[name] = tuple(values[name])
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})

    def to_environment(self) -> str:
        """JSON for $PNEUMOSCAN_SERVE_SETTINGS, without the API key (that stays in its own variable)."""
        values = asdict(self)
        values.pop("api_key")
        return json.dumps(values)

    def onnx_threads(self) -> int:
        return self.threads or max(1, usable_cpus() // self.parallel)

    def decoder_threads(self) -> int:
        return self.decode_threads or usable_cpus()
