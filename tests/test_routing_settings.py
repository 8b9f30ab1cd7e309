"""The broker_routes setting (issue 18, part 2): read from JSON, refused
with the setting's name and the fix, passwords never echoed; a worker
refuses to mix routed and table queues; an unreachable broker fails the
enqueue loudly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings as hsettings, strategies as st

import jobtable
from jobtable import settings
from jobtable.exceptions import ConfigurationError
from jobtable.routing import publish, routes

from tests.routing_support import AMQP_URL, new_queue
from tests.worker_jobs import Add, requests

SECRET = "s3cr3t-pw"


# -- the setting ---------------------------------------------------------------


def _load(value: str) -> settings.Settings:
    return settings._load({"JOBTABLE_BROKER_ROUTES": value})


def test_routes_setting_reads_json_and_defaults_to_no_routing() -> None:
    assert settings._load({}).broker_routes == {}
    loaded = _load(json.dumps({"thumbnails": AMQP_URL, " video ": "amqps://u:p@rabbit.example:5671/vh"}))
    assert loaded.broker_routes == {"thumbnails": AMQP_URL, "video": "amqps://u:p@rabbit.example:5671/vh"}


@pytest.mark.parametrize(
    "value, problem",
    [
        ('{"thumbnails": ', "not a JSON object"),
        ('["thumbnails"]', "must be an object"),
        ('{"thumbnails": "redis://u:%s@h:6379/0"}' % SECRET, "scheme 'redis'"),
        ('{"thumbnails": "amqp://u:%s@h:notaport//"}' % SECRET, "port that is not a number"),
        ('{"thumbnails": "amqp://u:pa@ss%s@h//"}' % SECRET, "unescaped '@'"),
        ('{"thumbnails": 5}', "must be a string"),
        ('{"": "%s"}' % AMQP_URL, "queue name is empty"),
        ('{"thumbnails": "amqp://u:%s@:5672//"}' % SECRET, "names no host"),
        ('{"thumbnails": "%s"}' % ("amqp://h/" + "x" * 70000), "characters long"),
    ],
)
def test_bad_routes_name_the_setting_and_never_show_the_password(value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _load(value)
    text = str(caught.value)
    assert "JOBTABLE_BROKER_ROUTES" in text and problem in text
    assert SECRET not in text and "ss" + SECRET not in text


@hsettings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=3), st.text(min_size=1, max_size=12))
def test_any_routes_value_is_read_or_refused_without_echoing_a_password(
    value: dict[str, str], password: str
) -> None:
    # Each URL-ish value gets the password in its user-info part.
    hostile = {queue: f"amqp://user:{password}@{url}" for queue, url in value.items()}
    try:
        out = routes.parse(json.dumps(hostile))
    except ValueError as exc:
        # A leak would show the user-info whole; redaction shows user:***@.
        assert f"user:{password}@" not in str(exc) or f"user:{password}@" in "".join(hostile)
    else:
        assert set(out) == {queue.strip() for queue in hostile}


def test_a_worker_refuses_to_mix_routed_and_table_queues() -> None:
    with pytest.raises(ConfigurationError, match="one worker for each kind"):
        routes.for_worker(["thumbnails", "default"], {"thumbnails": AMQP_URL})
    with pytest.raises(ConfigurationError, match="different brokers") as caught:
        routes.for_worker(["a", "b"], {"a": AMQP_URL, "b": f"amqp://u:{SECRET}@other//"})
    assert SECRET not in str(caught.value)
    assert routes.for_worker(["default"], {"thumbnails": AMQP_URL}) is None


def test_publishing_to_an_unreachable_broker_fails_naming_the_queue_not_the_password(db_url: str) -> None:
    queue = new_queue()
    jobtable.configure(broker_routes={queue: f"amqp://guest:{SECRET}@127.0.0.1:1//"}, connect_timeout=2)
    with pytest.raises(publish.PublishError) as caught:
        Add(1, 2).run_in_worker(queue=queue)
    assert queue in str(caught.value) and SECRET not in str(caught.value)
    assert requests() == []  # nothing half-enqueued in the table
