"""A user's ORM model, for ORM-instance job parameters."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from jobtable.db.engine import normalize_url
from jobtable.settings import get_settings

_engines: dict[str, Engine] = {}


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "test_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))


def app_engine() -> Engine:
    """The application's own engine on the same database (not jobtable's)."""
    url = get_settings().database_url
    if url not in _engines:
        _engines[url] = create_engine(normalize_url(url))
    return _engines[url]


def make_session() -> Session:
    """The session factory named by JOBTABLE_SESSION_FACTORY in the tests."""
    return Session(app_engine())
