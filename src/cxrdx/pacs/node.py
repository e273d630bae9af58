"""The PACS node: follow Orthanc's change feed, analyse each new CR/DX chest image, store the results back.

For every ``NewInstance`` change: look up a few tags (no download yet), skip
what the model must not read (with a logged reason), download the file,
predict + Grad-CAM, POST the SR and the Secondary Capture to the same study,
remember the SOP Instance UID. The cursor and the handled UIDs live in the
audit database (:mod:`cxrdx.pacs.state`), so a restarted node carries on
where it stopped and never analyses an image twice; result UIDs are derived
from the source, so even a crash between storing and remembering stores
nothing twice. While Orthanc is unreachable the node waits with exponential
backoff and then resumes.

Logs name instances by their Orthanc ID (an opaque hash) and never hold a
patient attribute, a DICOM value other than modality / body part / view, or
a third-party exception text (which may quote values).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..data.io import ImageReadError
from .analysis import Analyzer, read_header, skip_reason
from .orthanc import OrthancClient, OrthancError, OrthancUnavailable
from .results import to_bytes
from .state import DONE, FAILED, SKIPPED, NodeState, Outcome

logger = logging.getLogger("cxrdx.pacs")


@dataclass
class Backoff:
    first: float = 1.0
    factor: float = 2.0
    max: float = 30.0

    def delays(self):
        delay = self.first
        while True:
            yield delay
            delay = min(self.max, delay * self.factor)


@dataclass
class PassStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    changes: int = 0


class PacsNode:
    def __init__(
        self, client: OrthancClient, analyzer: Analyzer, state: NodeState, *, poll_interval: float = 2.0,
        batch: int = 100, backoff: Backoff | None = None, from_start: bool = False,
        sleep: Callable[[float], None] | None = None,
    ):
        self.client, self.analyzer, self.state = client, analyzer, state
        self.poll_interval, self.batch = poll_interval, batch
        self.backoff = backoff or Backoff()
        self.from_start = from_start
        self.stop_event = threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self.retries = 0
        """How many times the node waited for an unreachable Orthanc (for tests and monitoring)."""

    # ------------------------------------------------------------------ one instance
    def handle(self, instance_id: str) -> str:
        """Analyse one Orthanc instance (if it qualifies); returns the status recorded or ``"seen"``."""
        tags = self.client.tags(instance_id)
        sop = str(tags.get("SOPInstanceUID") or "")
        if not sop:
            logger.info("instance %s skipped: no SOP Instance UID", instance_id)
            return SKIPPED
        if self.state.handled(sop):
            logger.debug("instance %s already handled", instance_id)
            return "seen"
        reason = skip_reason(tags)
        if reason:
            logger.info("instance %s skipped: %s", instance_id, reason)
            self.state.record(sop, Outcome(SKIPPED, reason=reason))
            return SKIPPED
        start = time.perf_counter()
        data = self.client.file(instance_id)
        try:
            analysis = self.analyzer.analyse(data, read_header(data))
        except ImageReadError as exc:
            logger.warning("instance %s not analysed: %s", instance_id, exc.code)
            self.state.record(sop, Outcome(FAILED, reason=exc.code))
            return FAILED
        except Exception as exc:  # noqa: BLE001 - e.g. highdicom refusing a source attribute: one bad image never stops the node
            logger.warning("instance %s: not analysed (%s)", instance_id, type(exc).__name__)  # the text may quote values
            self.state.record(sop, Outcome(FAILED, reason=f"analysis failed ({type(exc).__name__})"))
            return FAILED
        objects = analysis.objects
        for ds in objects.datasets:
            self.client.store(to_bytes(ds))
        latency = (time.perf_counter() - start) * 1000
        self.state.record(sop, Outcome(
            DONE, predicted=analysis.predicted, model_version=self.analyzer.identity.version,
            report_uid=str(objects.report.SOPInstanceUID),
            overlay_uid=str(objects.overlay.SOPInstanceUID) if objects.overlay is not None else "", latency_ms=latency,
        ))
        logger.info("instance %s: %s stored (%.0f ms)", instance_id, "SR + overlay" if objects.overlay is not None else "SR",
                    latency)
        return DONE

    # ------------------------------------------------------------------ the feed
    def start_seq(self) -> int:
        seq = self.state.last_seq()
        if seq is None:
            seq = 0 if self.from_start else self.client.last_seq()
            self.state.set_last_seq(seq)
            logger.info("first start: following changes after #%d%s", seq, " (whole backlog)" if self.from_start else "")
        return seq

    def poll(self) -> PassStats:
        """Work through every change logged so far (raises :class:`OrthancUnavailable` if Orthanc goes away)."""
        stats = PassStats()
        seq = self.start_seq()
        while not self.stop_event.is_set():
            page = self.client.changes(seq, self.batch)
            if not page.get("Changes") and int(page.get("Last", seq)) < seq:
                # Orthanc's change log is shorter than our cursor: a new or reset Orthanc database.
                logger.warning("Orthanc's change log ends at #%s, before this node's cursor #%d: reading it from the start "
                               "(handled instances are not analysed again)", page.get("Last"), seq)
                seq = 0
                self.state.set_last_seq(0, rewind=True)
                continue
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "NewInstance" and change.get("ResourceType") == "Instance":
                    stats.changes += 1
                    try:
                        status = self.handle(change["ID"])
                    except OrthancUnavailable:
                        raise
                    except OrthancError as exc:  # e.g. deleted since: nothing to analyse
                        logger.warning("instance %s not handled: %s", change["ID"], exc)
                        status = "error"
                    stats.done += status == DONE
                    stats.skipped += status == SKIPPED
                    stats.failed += status == FAILED
                seq = int(change["Seq"])
                self.state.set_last_seq(seq)
                if self.stop_event.is_set():
                    return stats
            seq = max(seq, int(page.get("Last", seq)))
            self.state.set_last_seq(seq)
            if page.get("Done", True):
                return stats
        return stats

    def run(self, *, once: bool = False, give_up_after: float | None = None) -> PassStats:
        """Poll until :meth:`stop` (or, with ``once``, until the backlog is done).

        While Orthanc is unreachable, wait with backoff; ``give_up_after`` seconds
        of continuous outage raise :class:`OrthancUnavailable` (None = wait forever).
        """
        total = PassStats()
        delays, down_since = None, None
        while not self.stop_event.is_set():
            try:
                stats = self.poll()
            except OrthancUnavailable as exc:
                now = time.monotonic()
                down_since = down_since or now
                if give_up_after is not None and now - down_since >= give_up_after:
                    raise
                delays = delays or self.backoff.delays()
                delay = next(delays)
                self.retries += 1
                logger.warning("%s; retrying in %.1f s", exc, delay)
                self._sleep(delay)
                continue
            if down_since is not None:
                logger.info("Orthanc reachable again after %.1f s", time.monotonic() - down_since)
            delays, down_since = None, None
            for k in ("done", "skipped", "failed", "changes"):
                setattr(total, k, getattr(total, k) + getattr(stats, k))
            if once:
                break
            self._sleep(self.poll_interval)
        return total

    def stop(self) -> None:
        self.stop_event.set()
