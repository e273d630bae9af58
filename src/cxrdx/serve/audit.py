"""The audit log: one row per prediction served, through SQLAlchemy (SQLite by default, PostgreSQL by URL).

A row holds when, which model (id and version), the SHA-256 and size of the
uploaded bytes, the probabilities, the latency and the client address. It
never holds the image, its file name or any DICOM tag: those may identify a
patient.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, DateTime, Float, Integer, String, create_engine, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .schemas import AuditEntry


class Base(DeclarativeBase):
    pass


class PredictionRecord(Base):
    __tablename__ = "cxrdx_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(16))
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    input_bytes: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    client: Mapped[str] = mapped_column(String(64))


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created, and SQLite gets WAL + a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class AuditLog:
    """Repository over the ``cxrdx_predictions`` table (created if missing)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer at a time; serialising writes here avoids "database is locked" retries
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def record(self, entry: AuditEntry) -> int:
        row = PredictionRecord(created_at=datetime.now(timezone.utc), **entry.model_dump())
        if self._write_lock is None:
            return self._insert(row)
        with self._write_lock:
            return self._insert(row)

    def _insert(self, row: PredictionRecord) -> int:
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)

    def latest(self, limit: int = 50, offset: int = 0) -> list[PredictionRecord]:
        """Newest first."""
        with self._sessions() as session:
            stmt = select(PredictionRecord).order_by(PredictionRecord.id.desc()).limit(limit).offset(offset)
            return list(session.scalars(stmt))

    def close(self) -> None:
        self.engine.dispose()
