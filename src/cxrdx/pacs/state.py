"""The PACS node's memory: where it is in Orthanc's change feed and which instances it has handled.

Two tables in the same SQLAlchemy database as the audit log (SQLite by
default, PostgreSQL by URL), so a restarted node neither skips nor repeats
work. The SOP Instance UID is the key (it is what makes an image the same
image after a re-send); no patient attribute is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..serve.audit import make_engine

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


class Base(DeclarativeBase):
    pass


class Cursor(Base):
    __tablename__ = "cxrdx_pacs_cursor"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The Orthanc server (URL without credentials)."""
    last_seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Handled(Base):
    __tablename__ = "cxrdx_pacs_instances"
    __table_args__ = (UniqueConstraint("source", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(255), default="")
    predicted: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    report_uid: Mapped[str] = mapped_column(String(64), default="")
    overlay_uid: Mapped[str] = mapped_column(String(64), default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    handled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


@dataclass
class Outcome:
    status: str
    reason: str = ""
    predicted: str = ""
    model_version: str = ""
    report_uid: str = ""
    overlay_uid: str = ""
    latency_ms: float = 0.0


class NodeState:
    """Cursor + handled instances for one Orthanc server (``source``)."""

    def __init__(self, url: str, source: str):
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        self.source = source[:255]

    def last_seq(self) -> int | None:
        with Session(self.engine) as s:
            row = s.get(Cursor, self.source)
            return None if row is None else row.last_seq

    def set_last_seq(self, seq: int, *, rewind: bool = False) -> None:
        """Move the cursor forward to ``seq`` (or anywhere with ``rewind``)."""
        with Session(self.engine) as s, s.begin():
            row = s.get(Cursor, self.source)
            now = datetime.now(timezone.utc)
            if row is None:
                s.add(Cursor(source=self.source, last_seq=seq, updated_at=now))
            elif seq > row.last_seq or rewind:
                row.last_seq, row.updated_at = seq, now

    def handled(self, sop_instance_uid: str) -> bool:
        with Session(self.engine) as s:
            stmt = select(Handled.id).where(Handled.source == self.source, Handled.sop_instance_uid == sop_instance_uid)
            return s.scalar(stmt) is not None

    def record(self, sop_instance_uid: str, outcome: Outcome) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(Handled(source=self.source, sop_instance_uid=sop_instance_uid[:64], status=outcome.status,
                          reason=outcome.reason[:255], predicted=outcome.predicted, model_version=outcome.model_version,
                          report_uid=outcome.report_uid, overlay_uid=outcome.overlay_uid, latency_ms=outcome.latency_ms,
                          handled_at=datetime.now(timezone.utc)))

    def counts(self) -> dict[str, int]:
        with Session(self.engine) as s:
            stmt = select(Handled.status, func.count()).where(Handled.source == self.source).group_by(Handled.status)
            return {status: int(n) for status, n in s.execute(stmt)}

    def rows(self, status: str | None = None) -> list[Handled]:
        with Session(self.engine) as s:
            stmt = select(Handled).where(Handled.source == self.source).order_by(Handled.id)
            if status:
                stmt = stmt.where(Handled.status == status)
            return list(s.scalars(stmt))

    def close(self) -> None:
        self.engine.dispose()
