"""MySQL/MariaDB URLs: accepted forms, the driver they mean, masked display."""

from __future__ import annotations

import pytest

from jobtable import dburls as urls
from jobtable.exceptions import ConfigurationError


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("mysql://root:s3cret@127.0.0.1:3306/db", "mysql+mysqldb://root:***@127.0.0.1:3306/db"),
        ("mariadb://root:s3cret@127.0.0.1/db", "mysql+mysqldb://root:***@127.0.0.1/db"),
        ("mysql+mysqldb://u:s3cret@h/db", "mysql+mysqldb://u:***@h/db"),
        ("mariadb+pymysql://u:s3cret@h/db?charset=utf8mb4", "mysql+pymysql://u:***@h/db?charset=utf8mb4"),
        ("jobtable+mysql+pymysql://u:s3cret@h/db", "mysql+pymysql://u:***@h/db"),
    ],
)
def test_mysql_urls_are_accepted_and_masked(raw: str, shown: str) -> None:
    assert urls.render(urls.normalize_url(raw)) == shown


def test_unknown_mysql_driver_is_refused_without_the_password() -> None:
    with pytest.raises(ConfigurationError, match="through mysqlclient \\(or PyMySQL\\), not 'asyncmy'") as info:
        urls.normalize_url("mysql+asyncmy://u:s3cret@h/db")
    assert "s3cret" not in str(info.value)
