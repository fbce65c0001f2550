"""CHAP: both sides, one-way and mutual, encodings, failures without leaks."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earmark.iscsi.chap import (
    ChapAuthenticator,
    ChapResponder,
    chap_response,
    decode_binary,
    encode_binary,
)
from earmark.iscsi.errors import AuthenticationError, ProtocolError

SECRET = b"initiator-secret-123"
TARGET_SECRET = b"target-secret-4567"


def counter_random(start: int) -> Callable[[int], bytes]:
    state = [start]

    def rnd(n: int) -> bytes:
        state[0] += 1
        return bytes((state[0] + i) & 0xFF for i in range(n))

    return rnd


def lookup(name: str) -> bytes | None:
    return SECRET if name == "alice" else None


def run(responder: ChapResponder, auth: ChapAuthenticator) -> None:
    challenge = auth.receive(dict(responder.start()))
    reply = responder.receive(dict(challenge))
    final = auth.receive(dict(reply))
    if final:
        assert responder.receive(dict(final)) == []


def test_one_way_md5_matches_rfc1994_formula() -> None:
    responder = ChapResponder("alice", SECRET)
    auth = ChapAuthenticator(lookup, random=lambda n: bytes(range(n)))
    challenge = dict(auth.receive({"CHAP_A": "5"}))
    assert challenge == {"CHAP_A": "5", "CHAP_I": "0", "CHAP_C": "0x" + bytes(range(32)).hex()}
    reply = dict(responder.receive(challenge))
    expected = hashlib.md5(b"\x00" + SECRET + bytes(range(32))).hexdigest()
    assert reply == {"CHAP_N": "alice", "CHAP_R": "0x" + expected}
    assert auth.receive(reply) == []
    assert auth.done and responder.done and auth.user == "alice"


@pytest.mark.parametrize("algorithm", [5, 6, 7, 8])
def test_mutual(algorithm: int) -> None:
    responder = ChapResponder("alice", SECRET, algorithms=(algorithm,), target_user="tgt",
                              target_secret=TARGET_SECRET, random=counter_random(100))
    auth = ChapAuthenticator(lookup, algorithms=(5, 6, 7, 8), target_user="tgt",
                             target_secret=TARGET_SECRET, random=counter_random(0))
    run(responder, auth)
    assert responder.done and auth.done


def test_algorithm_choice_follows_initiator_order() -> None:
    auth = ChapAuthenticator(lookup, algorithms=(5, 7))
    assert dict(auth.receive({"CHAP_A": "6,7,5"}))["CHAP_A"] == "7"
    with pytest.raises(AuthenticationError, match="no common CHAP algorithm"):
        ChapAuthenticator(lookup).receive({"CHAP_A": "7,8"})


def test_wrong_secret_fails_without_leaking() -> None:
    responder = ChapResponder("alice", b"wrong-secret-xyz")
    auth = ChapAuthenticator(lookup)
    reply = responder.receive(dict(auth.receive(dict(responder.start()))))
    with pytest.raises(AuthenticationError) as info:
        auth.receive(dict(reply))
    message = str(info.value) + repr(auth) + repr(responder)
    assert "does not match" in message
    for secret in (SECRET, b"wrong-secret-xyz"):
        assert secret.decode() not in message
    assert dict(reply)["CHAP_R"] not in message
    assert not auth.done


def test_wrong_target_secret_detected_by_initiator() -> None:
    responder = ChapResponder("alice", SECRET, target_user="tgt", target_secret=b"other")
    auth = ChapAuthenticator(lookup, target_user="tgt", target_secret=TARGET_SECRET)
    with pytest.raises(AuthenticationError, match="wrong target secret"):
        run(responder, auth)


def test_unknown_user_and_mutual_without_credentials() -> None:
    auth = ChapAuthenticator(lookup)
    with pytest.raises(AuthenticationError, match="unknown CHAP user 'bob'"):
        run(ChapResponder("bob", SECRET), auth)
    with pytest.raises(AuthenticationError, match="no target secret"):
        run(ChapResponder("alice", SECRET, target_secret=b"x" * 12), ChapAuthenticator(lookup))


def test_reflected_challenge_is_refused() -> None:
    auth = ChapAuthenticator(lookup, target_user="t", target_secret=TARGET_SECRET,
                             random=lambda n: b"\x07" * n)
    challenge = dict(auth.receive({"CHAP_A": "5"}))
    c = decode_binary("CHAP_C", challenge["CHAP_C"])
    r = chap_response(5, 7, SECRET, c)
    with pytest.raises(AuthenticationError, match="reflected"):
        auth.receive({"CHAP_N": "alice", "CHAP_R": encode_binary(r), "CHAP_I": "7",
                      "CHAP_C": challenge["CHAP_C"]})


def test_base64_response_accepted() -> None:
    auth = ChapAuthenticator(lookup, random=lambda n: b"\x01" * n)
    challenge = dict(auth.receive({"CHAP_A": "5"}))
    r = chap_response(5, 1, SECRET, b"\x01" * 32)
    assert auth.receive({"CHAP_N": "alice", "CHAP_R": "0b" + base64.b64encode(r).decode()}) == []
    assert challenge["CHAP_I"] == "1"


def test_responder_rejects_bad_target_messages() -> None:
    with pytest.raises(AuthenticationError, match="CHAP_A=7, which we did not offer"):
        ChapResponder("alice", SECRET).receive({"CHAP_A": "7", "CHAP_I": "1", "CHAP_C": "0x01"})
    with pytest.raises(AuthenticationError, match="CHAP_I='300'"):
        ChapResponder("alice", SECRET).receive({"CHAP_A": "5", "CHAP_I": "300", "CHAP_C": "0x01"})
    with pytest.raises(AuthenticationError, match="CHAP_C missing"):
        ChapResponder("alice", SECRET).receive({"CHAP_A": "5", "CHAP_I": "1"})


@given(st.binary(min_size=1, max_size=64))
def test_binary_encodings(value: bytes) -> None:
    assert decode_binary("k", encode_binary(value)) == value
    assert decode_binary("k", "0B" + base64.b64encode(value).decode()) == value
    assert decode_binary("k", "0X" + value.hex().upper()) == value


@given(st.text(max_size=20))
def test_decode_binary_raises_only_protocol_error(text: str) -> None:
    try:
        decode_binary("CHAP_R", text)
    except ProtocolError as exc:
        assert "CHAP_R" in exc.reason
