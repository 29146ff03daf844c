"""The server's Prometheus figures: requests, tokens restored and prefilled, time to first
token, the store per tier, the queue, and the process's RSS and CPU (psutil)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    """One registry per server (no process-wide globals)."""

    def __init__(self, store, pool):
        self.registry = CollectorRegistry()
        self.requests = Counter("kvcpu_requests", "Requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("kvcpu_prompt_tokens", "Prompt tokens, by how they reached the KV cache.",
                              ["how"], registry=self.registry)
        self.generated = Counter("kvcpu_completion_tokens", "Tokens generated.", registry=self.registry)
        self.ttft = Histogram("kvcpu_time_to_first_token_seconds", "From a request's arrival to its first token.",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_Live(store, pool))

    def turn(self, restored: int, prefilled: int, generated: int, ttft_s: float | None) -> None:
        self.tokens.labels("restored").inc(restored)
        self.tokens.labels("prefilled").inc(prefilled)
        self.generated.inc(generated)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """Figures read at each scrape: the store, the queue and the process."""

    def __init__(self, store, pool):
        self.store, self.pool = store, pool

    def collect(self):
        s = self.store.stats()
        used = GaugeMetricFamily("kvcpu_store_bytes", "Bytes the store holds, per tier.", labels=["tier"])
        used.add_metric(["ram"], s["ram_bytes"])
        used.add_metric(["disk"], s["disk_bytes"])
        yield used
        budget = GaugeMetricFamily("kvcpu_store_budget_bytes", "The store's byte budget, per tier.", labels=["tier"])
        budget.add_metric(["ram"], s["budget_bytes"])
        budget.add_metric(["disk"], s["disk_budget_bytes"])
        yield budget
        entries = GaugeMetricFamily("kvcpu_store_entries", "Entries in the store, per tier.", labels=["tier"])
        rows = self.store.entries()
        entries.add_metric(["ram"], sum(r["in_ram"] for r in rows))
        entries.add_metric(["disk"], sum(r["on_disk"] for r in rows))
        yield entries
        yield GaugeMetricFamily("kvcpu_store_hit_ratio", "Share of lookups that found a stored prefix.",
                                value=s["hit_ratio"])
        yield GaugeMetricFamily("kvcpu_store_pending_bytes", "Bytes of states held in memory on their way into "
                                "the store, counted in the RAM budget (a turn restores them from there).",
                                value=s["ram_held_bytes"])
        ev = CounterMetricFamily("kvcpu_store_evictions", "Entries evicted, per tier.", labels=["tier"])
        for tier in ("ram", "disk"):
            ev.add_metric([tier], s["evictions"].get(tier, 0))
        yield ev
        yield CounterMetricFamily("kvcpu_store_demotions", "Entries re-encoded smaller under pressure.",
                                  value=sum(s["demotions"].values()))
        yield GaugeMetricFamily("kvcpu_queue_depth", "Requests waiting for an engine.", value=self.pool.waiting)
        yield GaugeMetricFamily("kvcpu_engines_busy", "Engines serving a request.", value=self.pool.busy)
        yield GaugeMetricFamily("kvcpu_process_rss_bytes", "Resident memory of the server (psutil).",
                                value=metrics.rss_bytes())
        yield CounterMetricFamily("kvcpu_process_cpu_seconds", "CPU time of the server, user and system (psutil).",
                                  value=metrics.cpu_seconds())
