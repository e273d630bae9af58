"""The audit log: one row per prediction served, through SQLAlchemy (SQLite by default, PostgreSQL by URL).

A row holds when, which model (id, version, run name and modality: a server may
hold several), the SHA-256 and size of the uploaded bytes, the probabilities, the
latency and the client address. It never holds the image, its file name or any
DICOM tag: those may identify a patient.

Schema changes are additive only: a column added since a database was created
(:data:`ADDED_COLUMNS`) is added to an existing table when the log opens, so an
old audit database keeps working (its old rows read back with nulls there).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import JSON, DateTime, Float, Integer, String, create_engine, func, inspect, select, text
from sqlalchemy.exc import DBAPIError
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
    model_run: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    runtime: Mapped[str] = mapped_column(String(16))
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    input_bytes: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    client: Mapped[str] = mapped_column(String(64))


ADDED_COLUMNS = ("model_run", "modality")
"""Nullable columns added after the first release of the table (added to older databases on open)."""


def add_missing_columns(engine: Engine) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each :data:`ADDED_COLUMNS` the existing table lacks; returns those added.
    Safe when two servers open the same database at once (a column another one just added is not an error)."""
    table = PredictionRecord.__table__
    have = {c["name"] for c in inspect(engine).get_columns(table.name)}
    added = []
    for name in ADDED_COLUMNS:
        if name in have:
            continue
        column = table.c[name]
        ddl = f"ALTER TABLE {table.name} ADD COLUMN {name} {column.type.compile(dialect=engine.dialect)}"
        try:
            with engine.begin() as conn:
                conn.execute(text(ddl))
        except DBAPIError:
            if name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise
        if column.index:
            with engine.begin() as conn:
                conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{table.name}_{name} ON {table.name} ({name})"))
        added.append(name)
    return added


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
        self.migrated = add_missing_columns(self.engine)
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
