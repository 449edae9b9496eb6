"""`predict --engine ray`: Ray Data's `map_batches` over a pool of actors, one ONNX session each.

Each actor runs the same batch path as the local engine (`runtime.predict.predict_many`), so rows,
labels and per-file errors are the local engine's. Results come back to the driver, which keeps a
journal beside the output (one JSON line a film, flushed and fsynced each batch): `--resume`
reads it and sends only the films not yet in it. The journal is removed once the outputs are
written.

Loopback by default: without `--address` the engine starts its own single-machine cluster with
every component on 127.0.0.1. Ray otherwise advertises the machine's interface address even when
given `_node_ip_address`, because `get_node_ip_address` asks the route to the outside; with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it answers loopback, as it does on a laptop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.core.errors import InputError
from pneumoscan.core.hardware import usable_cpus
from pneumoscan.runtime.predict import Result

logger = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
BATCH_SIZE = 32  # films an actor predicts per call


@dataclass(frozen=True)
class RaySettings:
    model: str
    threads: int = 1  # ONNX threads per actor
    gate: bool = True
    indeterminate_margin: float = 0.0
    set_coverage: float | None = None
    address: str | None = None  # an existing cluster (ray://... or host:port); None: a local one
    actors: int | None = None  # default: one per CPU of a local cluster
    batch_size: int = BATCH_SIZE


class _Predictor:
    """One Ray actor: loads the model once, predicts batches of paths."""

    def __init__(self, settings: RaySettings) -> None:
        from pneumoscan.runtime.model import load_runtime_model

        self.settings = settings
        self.model = load_runtime_model(
            settings.model, threads=settings.threads, gate=settings.gate
        )

    def __call__(self, batch: dict) -> dict:
        from pneumoscan.runtime.predict import predict_many

        results = predict_many(
            self.model,
            [Path(source) for source in batch["source"]],
            indeterminate_margin=self.settings.indeterminate_margin,
            workers=1,
            set_coverage=self.settings.set_coverage,
        )
        return {
            "index": list(batch["index"]),
            "result": [json.dumps(result.to_dict()) for result in results],
        }


def start_cluster(address: str | None, cpus: int | None = None) -> None:
    """Connect to `address`, or start a single-machine cluster on loopback only."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        # The node's address: loopback, in the processes Ray starts (they read the variable when
        # they import ray) and in this one (which read it already, if ray was imported before).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=cpus or usable_cpus(),
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def read_journal(path: Path) -> dict[str, Result]:
    """Films a run already predicted, by source; a torn last line (the run was killed while
    writing it) is dropped and that film predicted again."""
    done: dict[str, Result] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            document = json.loads(line)
            done[document["source"]] = Result(**document)
        except (ValueError, KeyError, TypeError):
            continue
    return done


def predict_on_ray(
    files: Sequence[Path],
    settings: RaySettings,
    journal: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Result]:
    """A result for every file, in order; with `journal`, films already in it are not sent."""
    import ray.data

    done = read_journal(journal) if journal is not None else {}
    sources = [str(path) for path in files]
    todo = [(index, source) for index, source in enumerate(sources) if source not in done]
    if done:
        logger.info(
            "resuming: %d of %d films already predicted", len(sources) - len(todo), len(sources)
        )
    results: dict[int, Result] = {
        index: done[source] for index, source in enumerate(sources) if source in done
    }
    if todo:
        start_cluster(settings.address)
        actors = settings.actors or max(
            1, int(ray.cluster_resources().get("CPU", 1)) // settings.threads
        )
        dataset = ray.data.from_items([{"index": i, "source": s} for i, s in todo])
        predicted = dataset.map_batches(
            _Predictor,
            fn_constructor_kwargs={"settings": settings},
            batch_size=settings.batch_size,
            concurrency=actors,
            num_cpus=settings.threads,
        )
        handle = open(journal, "a", encoding="utf-8") if journal is not None else None
        try:
            for batch in predicted.iter_batches(batch_size=None, batch_format="numpy"):
                lines = []
                for index, text in zip(batch["index"], batch["result"]):
                    document = json.loads(str(text))
                    results[int(index)] = Result(**document)
                    lines.append(json.dumps(document))
                if handle is not None:
                    handle.write("\n".join(lines) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                if progress is not None:
                    progress(len(results), len(sources))
        finally:
            if handle is not None:
                handle.close()
    missing = [sources[i] for i in range(len(sources)) if i not in results]
    if missing:
        raise InputError(
            f"the Ray engine returned no result for {len(missing)} files, e.g. {missing[0]}"
        )
    return [results[index] for index in range(len(sources))]


def journal_path(csv_out: Path | None, json_out: Path | None) -> Path | None:
    """The resume journal beside the first output: OUT.csv -> OUT.csv.ray-journal.jsonl."""
    first = csv_out or json_out
    return None if first is None else first.with_name(first.name + ".ray-journal.jsonl")
