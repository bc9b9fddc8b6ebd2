"""Prometheus metrics of one server (its own registry, so several apps in one process never mix):
requests, prompts, flagged prompts and categories, errors by kind, batch sizes, latencies, queue depth."""
from __future__ import annotations

PREFIX = "latentguard"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """The counters, histograms and gauges ``GET /metrics`` exposes (names start with ``latentguard_``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompts = Counter(f"{PREFIX}_prompts", "Prompts judged, by endpoint", ["endpoint"], registry=r)
        self.flagged = Counter(f"{PREFIX}_flagged_prompts", "Prompts judged unsafe", registry=r)
        self.flagged_categories = Counter(f"{PREFIX}_flagged_categories", "Flagged categories, by category",
                                          ["category"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Errors answered, by kind (bad_request, too_large, unauthorized, "
                              "queue_full, not_ready, scoring, audit, reload)", ["kind"], registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Prompts scored per batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_seconds", "Time to score one batch (model thread)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "Request latency, by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Prompts waiting for a batch", registry=r)
        self.reloads = Counter(f"{PREFIX}_reloads", "Blacklist reloads, by outcome (ok, failed)", ["outcome"],
                               registry=r)
        self.concepts = Gauge(f"{PREFIX}_blacklist_concepts", "Concepts on the serving blacklist", registry=r)
        self.generation = Gauge(f"{PREFIX}_blacklist_generation", "Blacklist loads so far (1 + reloads)", registry=r)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the guard is loaded and the batcher runs", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
