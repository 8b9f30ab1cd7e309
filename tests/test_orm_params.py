"""SQLAlchemy ORM instances are stored as references and loaded when the job runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

import jobtable
from jobtable.db.engine import get_engine
from jobtable.exceptions import ConfigurationError, ModelNotFound
from jobtable.execution import instantiate
from jobtable.messages import decode_task
from tests.orm_models import Base, User, app_engine
from tests.sample_jobs import Echo


@pytest.fixture
def users(db_url: str) -> Iterator[None]:
    engine = app_engine()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    jobtable.configure(session_factory="tests.orm_models:make_session")
    yield
    Base.metadata.drop_all(engine)


def _stored_call(uuid: str) -> tuple[list, dict]:
    from jobtable.db import reads_sql

    with get_engine().connect() as conn:
        (row,) = [r for r in reads_sql.list_requests(conn) if r.task_id == uuid]
    call = decode_task(row.message)
    return call.args, call.kwargs


def test_instance_is_stored_by_reference_and_loaded_again(users: None) -> None:
    with Session(app_engine()) as session:
        user = User(id=7, email="ada@example.com")
        session.add(user)
        session.commit()
        request = Echo(user, friends=[user]).run_in_worker()
    assert request is not None
    args, kwargs = _stored_call(request.uuid)
    assert args == [{"__type__": "jobtable.model", "__value__": {"model": "tests.orm_models:User", "pk": [7]}}]
    assert "ada@example.com" not in json.dumps([args, kwargs])

    job = instantiate(Echo.job_name(), args, kwargs)
    assert isinstance(job.args[0], User)
    assert (job.args[0].id, job.args[0].email) == (7, "ada@example.com")
    assert job.kwargs["friends"][0].email == "ada@example.com"


def test_deleted_row_gives_a_clear_error(users: None) -> None:
    with Session(app_engine()) as session:
        user = User(id=8, email="gone@example.com")
        session.add(user)
        session.commit()
        request = Echo(user).run_in_worker()
        session.delete(user)
        session.commit()
    assert request is not None
    args, kwargs = _stored_call(request.uuid)
    with pytest.raises(ModelNotFound, match=r"Echo argument 'args'\[0\]|Echo argument\[0\]: User with primary key 8 no longer exists"):
        instantiate(Echo.job_name(), args, kwargs)


def test_unsaved_instance_is_refused_at_enqueue(users: None) -> None:
    with pytest.raises(TypeError, match="User instance has no primary key yet: flush or commit it"):
        Echo(User(email="new@example.com")).run_in_worker()


def test_missing_session_factory_is_named(users: None) -> None:
    jobtable.configure(session_factory="")
    with Session(app_engine()) as session:
        session.add(User(id=9, email="x@example.com"))
        session.commit()
        request = Echo(session.get(User, 9)).run_in_worker()
    assert request is not None
    args, kwargs = _stored_call(request.uuid)
    with pytest.raises(ConfigurationError, match="JOBTABLE_SESSION_FACTORY"):
        instantiate(Echo.job_name(), args, kwargs)
