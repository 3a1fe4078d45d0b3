"""Prometheus metrics, served at ``GET /metrics`` on the bot's HTTP port.

One :class:`Metrics` per process (:data:`METRICS`), on its own registry so that nothing else in
the process (Ray, libraries) leaks into what the bot exports. What is counted where:

* ``/ask`` (:mod:`bot.ask`): questions by outcome, answer latency (slash command accepted →
  answer posted) by whether the cache answered, cache hits by match kind, rate-limit refusals;
* the Slack Web API (:func:`bot.slack_api.make_client`): calls that ended in an error, by method
  and Slack's error code, and the 429s and server errors that slack_sdk retried;
* jobs: read from the database at scrape time (:class:`JobCollector`), so the figures are right
  whichever process moved a job — the worker, the CLI or another bot replica.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# seconds; /ask answers take from milliseconds (cache) to a minute (a long answer on a CPU)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class JobCollector(Collector):
    """``threadtune_jobs{state}`` and ``threadtune_job_queue_depth``, counted in the database when
    Prometheus scrapes. A database that can't be read yields no job figures (and a log line)
    rather than failing the whole scrape."""

    def __init__(self) -> None:
        self.db: Engine | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.db is None:
            return
        from storage.db import session_scope
        from storage.jobs import count_by_state

        try:
            with session_scope(self.db) as s:
                counts = count_by_state(session=s)
        except Exception as exc:  # noqa: BLE001 - a scrape must not take the bot down
            log.warning("metrics: could not count jobs: %s", exc)
            return
        states = GaugeMetricFamily("threadtune_jobs", "Training jobs by state.", labels=["state"])
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "threadtune_job_queue_depth",
            "Jobs waiting for a worker (state queued).",
            value=counts["queued"],
        )


class Metrics:
    """The bot's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.asks = Counter(
            "threadtune_ask_requests",
            "Questions by outcome: answered, abstained (nothing curated covers it), failed "
            "(no answer: model unreachable or an error), rate_limited, "
            "refused (empty or too long); and by surface (slash, mention, dm, assistant).",
            ["outcome", "surface"],
            registry=r,
        )
        self.ask_latency = Histogram(
            "threadtune_ask_latency_seconds",
            "Answer latency from the accepted question to the posted answer, by surface.",
            ["cached", "surface"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "threadtune_ask_cache_hits",
            "/ask answers served from the cache, by match "
            "(exact: same normalised question; semantic: a near-identical question).",
            ["match"],
            registry=r,
        )
        self.rate_limited = Counter(
            "threadtune_ask_rate_limited",
            "/ask questions refused by the per-person rate limit.",
            registry=r,
        )
        self.slack_errors = Counter(
            "threadtune_slack_api_errors",
            "Slack Web API calls that failed, by method "
            "and error (Slack's error code, or the exception for network failures).",
            ["method", "error"],
            registry=r,
        )
        self.slack_retries = Counter(
            "threadtune_slack_api_retries",
            "Slack Web API calls retried by slack_sdk, "
            "by reason (rate_limited, server_error, connection_error).",
            ["reason"],
            registry=r,
        )
        self.jobs = JobCollector()
        r.register(self.jobs)
        for outcome in ("answered", "abstained", "failed", "rate_limited", "refused"):
            for surface in ("slash", "mention", "dm", "assistant"):
                # present at 0 from the start, so rates work from the first scrape
                self.asks.labels(outcome, surface)
        for match in ("exact", "semantic"):
            self.cache_hits.labels(match)

    def watch_jobs(self, db: Engine) -> None:
        """Count jobs in ``db`` at each scrape."""
        self.jobs.db = db

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = Metrics()
