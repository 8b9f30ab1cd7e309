from tests.sample_jobs import Echo


def test_enqueue_returns_request(db_url: str) -> None:
    request = Echo(1).run_in_worker()
    assert request is not None and request.uuid
