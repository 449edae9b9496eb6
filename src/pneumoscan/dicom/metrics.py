"""Prometheus metrics of the DICOM node (`dicom-node --metrics-port PORT`), on prometheus-client.

Read at each scrape from what the node already keeps (its `Counts`, the spool, its threads), so
the association, worker and courier threads do no extra work but one histogram observation per
delivery. No patient data and no file names in labels: statuses are DICOM status codes, stages,
prediction statuses and labels come from fixed lists.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class NodeCollector:
    """Counts, spool depth and thread health of one node, as Prometheus families."""

    def __init__(self, node) -> None:
        self.node = node

    def collect(self):
        counts = self.node.counts
        with counts._lock:
            stages = {
                stage: getattr(counts, stage)
                for stage in ("received", "refused", "predicted", "delivered", "failed", "retries")
            }
            statuses = dict(counts.statuses)
            outcomes = dict(counts.outcomes)
        films = CounterMetricFamily(
            "pneumoscan_node_films",
            "Films by stage: received (answered 0x0000), refused, predicted, delivered (a result "
            "set stored in a destination), failed (moved to failed/), retries (deliveries tried "
            "again).",
            labels=["stage"],
        )
        for stage, value in stages.items():
            films.add_metric([stage], value)
        yield films
        answers = CounterMetricFamily(
            "pneumoscan_node_cstore_answers",
            "C-STORE answers by DICOM status (0x0000 stored, 0xA700 out of resources, 0xA900 "
            "does not match, 0x0122 SOP class not supported).",
            labels=["status"],
        )
        for code, value in sorted(statuses.items()):
            answers.add_metric([f"0x{code:04X}"], value)
        yield answers
        predictions = CounterMetricFamily(
            "pneumoscan_predictions",
            "Films predicted by the node, by model, status and label.",
            labels=["model", "status", "label"],
        )
        for (status, label), value in sorted(outcomes.items()):
            predictions.add_metric([self.node.runtime.name, status, label], value)
        yield predictions
        spool = GaugeMetricFamily(
            "pneumoscan_node_spool",
            "Spool depth: films waiting for prediction (inbox), result sets waiting for delivery "
            "(outbox).",
            labels=["queue"],
        )
        for queue, read in (("inbox", self.node.spool.films), ("outbox", self.node.spool.jobs)):
            try:
                spool.add_metric([queue], len(read()))
            except OSError:  # the disk: the gauge is left out of this scrape
                logger.warning("metrics: cannot list the spool's %s", queue)
        yield spool
        dead = GaugeMetricFamily(
            "pneumoscan_node_dead_threads",
            "Worker or courier threads that have died (the node then refuses films and exits).",
        )
        dead.add_metric([], len(self.node.check_threads()))
        yield dead


class NodeMetrics:
    """The node's registry: the collector plus the received-to-delivered latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "pneumoscan_node_delivery_latency_seconds",
            "From a film's C-STORE to its results stored in a destination.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def serve(self, node, host: str, port: int):
        """Register the node's collector and serve /metrics on host:port (a daemon thread)."""
        self.registry.register(NodeCollector(node))
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics on http://%s:%d/metrics", host, port)
        return server
