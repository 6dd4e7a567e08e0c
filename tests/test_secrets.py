"""``loopguard._secrets``: what a URL or DSN looks like once its secrets are masked.

Pure functions over strings and SQLAlchemy URL objects (no server needed); the guard tests
check that every message, warning and record goes through them (``*_show_no_password``,
``test_password_is_masked_in_every_message_and_record``, and the pytest run in
``test_pytest_plugin.py``).
"""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from guard_helpers import SECRET, assert_no_secret
from sqlalchemy.engine import URL, make_url

from loopguard import _secrets
from loopguard._secrets import UNSHOWN, mask_dsn, mask_sqlalchemy_url

ENC = quote(SECRET, safe="")
BASE = "postgresql://app@db.example:5432/shop"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        # userinfo
        (
            f"postgresql://app:{ENC}@db.example:5432/shop",
            "postgresql://app:***@db.example:5432/shop",
        ),
        (f"postgres://app:{ENC}@h1:5432,h2:5433/shop", "postgres://app:***@h1:5432,h2:5433/shop"),
        (f"postgresql://app:{ENC}@[::1]:5432/shop", "postgresql://app:***@[::1]:5432/shop"),
        (f"postgresql://:{ENC}@/shop?host=/run/pg", "postgresql://:***@/shop?host=/run/pg"),
        # query parameters: any case, the name percent-encoded, any separator, given twice
        (f"{BASE}?password={ENC}", f"{BASE}?password=***"),
        (f"{BASE}?PassWord={ENC}&sslmode=require", f"{BASE}?PassWord=***&sslmode=require"),
        (f"{BASE}?pass%77ord={ENC}", f"{BASE}?pass%77ord=***"),
        (f"{BASE}?PASS%57ORD={quote_plus(SECRET)}", f"{BASE}?PASS%57ORD=***"),
        (f"{BASE}?sslpassword={ENC}&sslkey=/k.pem", f"{BASE}?sslpassword=***&sslkey=/k.pem"),
        (f"{BASE}?SSLPassword={ENC}", f"{BASE}?SSLPassword=***"),
        (f"{BASE}?port=5432;password={ENC}", f"{BASE}?port=5432;password=***"),
        (f"{BASE}?password=a&password={ENC}", f"{BASE}?password=***&password=***"),
        (f"{BASE}?password=", f"{BASE}?password=***"),
        # other drivers' spellings, and secrets inside a value
        (f"{BASE}?pwd={ENC}&auth_token={ENC}", f"{BASE}?pwd=***&auth_token=***"),
        (f"{BASE}?client_secret={ENC}", f"{BASE}?client_secret=***"),
        (f"{BASE}?options=-c%20pg.password%3D{ENC}", f"{BASE}?options=***"),
        (f"{BASE}?odbc_connect=DSN%3Dx%3BPWD%3D{ENC}", f"{BASE}?odbc_connect=***"),
        (f"{BASE}?proxy=http%3A%2F%2Fu%3A{ENC}%40p", f"{BASE}?proxy=***"),
        # libpq key=value
        (
            f"host=db user=app password={ENC} dbname=shop",
            "host=db user=app password=*** dbname=shop",
        ),
        (
            "host = db  password = 's3cr3t \\' PASSWORD-xyz'  dbname=shop",
            "host=db password=*** dbname=shop",
        ),
        ("host=db password=s3cr3t\\ PASSWORD-xyz", "host=db password=***"),
        ("host=db sslpassword=s3cr3t-PASSWORD-xyz", "host=db sslpassword=***"),
    ],
)
def test_passwords_are_masked(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert_no_secret([mask_dsn(dsn)])


@pytest.mark.parametrize(
    "dsn",
    [
        # A password with an unencoded '#', '/', '?' or '@' splits the URL elsewhere than
        # its author meant: the password would spill into the host, path, query or fragment.
        f"postgresql://app:{SECRET}@db/shop",
        "postgresql://app:s3cr3t#PASSWORD-xyz@db/shop",
        "postgresql://app:s3cr3t/PASSWORD-xyz@db/shop",
        "postgresql://app:s3cr3t?PASSWORD-xyz@db/shop",
        "postgresql://app:s3cr3t@PASSWORD-xyz/x@db/shop",
        "postgresql://app:s3cr3t@pw?PASSWORD-xyz@db/shop",
        "postgresql://app:s3cr3t@[PASSWORD-xyz/shop",  # not even a URL to urllib
        # Neither a URL nor key=value.
        "s3cr3t-PASSWORD-xyz",
        "host=db password='s3cr3t-PASSWORD-xyz",  # an unterminated quote
        "host=db =s3cr3t-PASSWORD-xyz",
        "",
    ],
)
def test_what_cannot_be_parsed_is_not_shown(dsn: str) -> None:
    assert mask_dsn(dsn) == UNSHOWN


@pytest.mark.parametrize(
    "dsn",
    [
        BASE,
        "postgresql://app@/shop?host=%2Ftmp%2Fpg&port=5432",
        "postgresql:///shop?host=/tmp/pg&port=5432",
        f"{BASE}?passfile=/home/app/.pgpass&sslkey=/k.pem&sslcert=/c.pem&sslrootcert=/r.pem",
        f"{BASE}?application_name=password-reset&options=-c%20search_path%3Dshop",
        f"{BASE}?user=app@corp",
        "host=/tmp/pg port=5432 user=app dbname=shop passfile=/home/app/.pgpass",
    ],
)
def test_dsns_without_secrets_are_shown_as_given(dsn: str) -> None:
    """Paths to files that hold secrets (passfile, sslkey, ...) are not secrets: shown."""
    assert mask_dsn(dsn) == dsn


def test_the_placeholder_is_the_one_documented() -> None:
    assert f"``{UNSHOWN}``" in " ".join(_secrets.__doc__.split())  # docs/logs.md#passwords


def test_anything_but_a_string_is_not_shown() -> None:
    assert mask_dsn(b"postgresql://app:pw@db/shop") == UNSHOWN  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            URL.create("postgresql+asyncpg", "app", SECRET, "db", 5432, "shop"),
            "postgresql+asyncpg://app:***@db:5432/shop",
        ),
        (
            URL.create("postgresql+asyncpg", "app", None, "db", None, "shop", {"password": SECRET}),
            "postgresql+asyncpg://app@db/shop?password=***",
        ),
        (
            URL.create(
                "postgresql+psycopg",
                "app",
                SECRET,
                "db",
                None,
                "shop",
                {"SSLPASSWORD": SECRET, "sslmode": "require", "PassWord": (SECRET, "x")},
            ),
            "postgresql+psycopg://app:***@db/shop?PassWord=***&SSLPASSWORD=***&sslmode=require",
        ),
        (
            make_url(f"mssql+aioodbc://app@dsn/shop?odbc_connect=DSN%3Dx%3BPWD%3D{ENC}"),
            "mssql+aioodbc://app@dsn/shop?odbc_connect=***",
        ),
        (
            make_url(f"postgresql+asyncpg://app@/shop?pass%77ord={ENC}"),
            "postgresql+asyncpg://app@/shop?password=***",
        ),
    ],
)
def test_sqlalchemy_urls_are_masked(url: URL, shown: str) -> None:
    """Userinfo (SQLAlchemy's hide_password) and query (which hide_password leaves)."""
    assert mask_sqlalchemy_url(url) == shown
    assert_no_secret([mask_sqlalchemy_url(url)])


def test_sqlalchemy_url_without_secrets_is_sqlalchemys_own_rendering() -> None:
    url = make_url("postgresql+asyncpg://app@/shop?host=%2Ftmp%2Fpg&port=5432&sslkey=/k.pem")
    assert mask_sqlalchemy_url(url) == url.render_as_string(hide_password=True)


def test_an_object_that_is_not_a_url_is_not_shown() -> None:
    assert mask_sqlalchemy_url(f"postgresql://app:{ENC}@db/shop") == UNSHOWN
