"""iSCSI URLs as libiscsi/QEMU write them; secrets from the environment and never shown."""

from __future__ import annotations

import pytest

from earmark.initiator.errors import BadUrlError
from earmark.initiator.url import parse_url


def test_full_url() -> None:
    u = parse_url("iscsi://alice%s3cret@10.0.0.1:3261/iqn.2024-01.org.x:disk/2")
    assert (u.host, u.port, u.target, u.lun, u.chap) == (
        "10.0.0.1", 3261, "iqn.2024-01.org.x:disk", 2, ("alice", "s3cret"))
    assert "s3cret" not in repr(u) and "s3cret" not in str(u)
    assert str(u) == "iscsi://alice@10.0.0.1:3261/iqn.2024-01.org.x:disk/2"


def test_defaults_ipv6_and_portal_only() -> None:
    u = parse_url("iscsi://[::1]/iqn.x:y/0")
    assert (u.host, u.port, u.portal, u.chap) == ("::1", 3260, "[::1]:3260", None)
    p = parse_url("iscsi://127.0.0.1:3262", need_target=False)
    assert p.target is None and p.port == 3262


def test_mutual_chap_and_environment() -> None:
    env = {"EARMARK_CHAP_USER": "bob", "EARMARK_CHAP_SECRET": "env-secret"}
    u = parse_url("iscsi://h/iqn.x:y/1?target_user=tgt&target_password=tpw", environ=env)
    assert u.chap == ("bob", "env-secret") and u.mutual == ("tgt", "tpw")
    # The URL's credentials win over the environment's.
    assert parse_url("iscsi://carol%pw@h/iqn.x:y/1", environ=env).chap == ("carol", "pw")


@pytest.mark.parametrize(("url", "words"), [
    ("http://h/iqn.x:y/1", "iscsi://"),
    ("iscsi:///iqn.x:y/1", "no host"),
    ("iscsi://h", "no /target-iqn/lun"),
    ("iscsi://h/iqn.x:y", "path must be"),
    ("iscsi://h/iqn.x:y/lun", "LUN"),
    ("iscsi://h:99999/iqn.x:y/1", "bad iSCSI URL"),
    ("iscsi://alice@h/iqn.x:y/1", "has no secret"),
    ("iscsi://h/iqn.x:y/1?foo=1", "unknown argument"),
])
def test_bad_urls_say_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(BadUrlError, match=words):
        parse_url(url, environ={})


def test_secret_never_in_the_error() -> None:
    with pytest.raises(BadUrlError) as err:
        parse_url("iscsi://alice%topsecret@h/iqn.x:y/notalun", environ={})
    assert "topsecret" not in str(err.value)
