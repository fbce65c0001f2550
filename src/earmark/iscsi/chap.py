"""CHAP authentication for iSCSI login (RFC 7143 §12.1.3, RFC 1994).

Sans-I/O: each side takes the CHAP_* keys it received and returns the keys to
send. Response = H(identifier byte || secret || challenge). Secrets and
responses never appear in reprs or exception messages.

Algorithms follow libiscsi >= 1.20 and Linux: 5 MD5, 6 SHA-1, 7 SHA-256,
8 SHA3-256. libiscsi 1.19 (Debian 12) only does 5, and tgt 1.0.85 calls its
SHA-1 "7", so MD5 is the only algorithm that interoperates with both; it is
the default.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence

from .errors import AuthenticationError, ProtocolError
from .negotiation import REJECT
from .text import TextPairs

RandomSource = Callable[[int], bytes]

ALGORITHMS: dict[int, str] = {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3_256"}
MAX_CHALLENGE_LENGTH = 1024
DEFAULT_CHALLENGE_LENGTH = 32


def encode_binary(value: bytes) -> str:
    """Hex form: libiscsi 1.19 only parses CHAP_C/CHAP_R written as 0x..."""
    return "0x" + value.hex()


def decode_binary(key: str, text: str) -> bytes:
    """Decode a 0x (hex) or 0b (base64) binary value (RFC 7143 §6.1)."""
    prefix, body = text[:2].lower(), text[2:]
    try:
        if prefix == "0x" and body:
            return bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)
        if prefix == "0b" and body:
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error):
        pass
    raise ProtocolError(f"{key} is not a 0x-hex or 0b-base64 binary value")


def chap_response(algorithm: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    h = hashlib.new(ALGORITHMS[algorithm])
    h.update(bytes((identifier,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def _need(keys: Mapping[str, str], name: str) -> str:
    value = keys.get(name)
    if value is None:
        raise AuthenticationError(f"{name} missing from the CHAP exchange")
    return value


def _identifier(value: str) -> int:
    if not value.isdigit() or int(value) > 255:
        raise AuthenticationError(f"CHAP_I={value[:16]!r} is not a number 0..255")
    return int(value)


def _challenge(keys: Mapping[str, str]) -> bytes:
    challenge = decode_binary("CHAP_C", _need(keys, "CHAP_C"))
    if not 1 <= len(challenge) <= MAX_CHALLENGE_LENGTH:
        raise AuthenticationError(
            f"CHAP_C of {len(challenge)} bytes is outside 1..{MAX_CHALLENGE_LENGTH}"
        )
    return challenge


class ChapResponder:
    """Initiator side: answers the target's challenge, optionally challenges back.

    Mutual CHAP is on when ``target_secret`` is given; then the target must
    prove it knows that secret under the name ``target_user``.
    """

    __slots__ = (
        "_algorithm",
        "_algorithms",
        "_expected",
        "_random",
        "_secret",
        "_target_secret",
        "_target_user",
        "done",
        "user",
    )

    def __init__(
        self,
        user: str,
        secret: bytes,
        *,
        algorithms: Sequence[int] = (5,),
        target_user: str | None = None,
        target_secret: bytes | None = None,
        random: RandomSource = secrets.token_bytes,
    ) -> None:
        self.user = user
        self._secret = secret
        self._algorithms = tuple(algorithms)
        self._target_user = target_user
        self._target_secret = target_secret
        self._random = random
        self._algorithm: int | None = None
        self._expected: bytes | None = None
        self.done = False

    def __repr__(self) -> str:
        return f"ChapResponder(user={self.user!r}, mutual={self._target_secret is not None})"

    def start(self) -> TextPairs:
        """CHAP_A offer, sent after the target chose AuthMethod=CHAP."""
        return [("CHAP_A", ",".join(str(a) for a in self._algorithms))]

    def receive(self, keys: Mapping[str, str]) -> TextPairs:
        if self._algorithm is None:
            return self._respond(keys)
        return self._verify_target(keys)

    def _respond(self, keys: Mapping[str, str]) -> TextPairs:
        a = _need(keys, "CHAP_A")
        if a == REJECT or not a.isdigit() or int(a) not in self._algorithms:
            raise AuthenticationError(f"target chose CHAP_A={a[:16]}, which we did not offer")
        self._algorithm = int(a)
        identifier = _identifier(_need(keys, "CHAP_I"))
        challenge = _challenge(keys)
        response = chap_response(self._algorithm, identifier, self._secret, challenge)
        out: TextPairs = [("CHAP_N", self.user), ("CHAP_R", encode_binary(response))]
        if self._target_secret is None:
            self.done = True
            return out
        own_id = self._random(1)[0]
        own_challenge = self._random(DEFAULT_CHALLENGE_LENGTH)
        if own_challenge == challenge:
            raise AuthenticationError("random source repeated the target's challenge")
        self._expected = chap_response(self._algorithm, own_id, self._target_secret, own_challenge)
        out += [("CHAP_I", str(own_id)), ("CHAP_C", encode_binary(own_challenge))]
        return out

    def _verify_target(self, keys: Mapping[str, str]) -> TextPairs:
        if self._expected is None or self.done:
            raise ProtocolError("CHAP keys received after CHAP finished")
        name = _need(keys, "CHAP_N")
        if self._target_user is not None and name != self._target_user:
            raise AuthenticationError(f"target authenticated as {name[:64]!r}, expected "
                                      f"{self._target_user!r}")
        got = decode_binary("CHAP_R", _need(keys, "CHAP_R"))
        if not hmac.compare_digest(got, self._expected):
            raise AuthenticationError("target's CHAP_R does not match: wrong target secret")
        self.done = True
        return []


class ChapAuthenticator:
    """Target side: challenges the initiator and, if asked, proves itself.

    ``lookup`` maps a CHAP_N to that user's secret (None if unknown).
    ``target_user``/``target_secret`` answer mutual CHAP; without them a
    mutual request fails, as RFC 7143 requires when we cannot authenticate.
    """

    __slots__ = (
        "_algorithm",
        "_algorithms",
        "_challenge",
        "_identifier",
        "_lookup",
        "_random",
        "_target_secret",
        "challenge_length",
        "done",
        "target_user",
        "user",
    )

    def __init__(
        self,
        lookup: Callable[[str], bytes | None],
        *,
        algorithms: Sequence[int] = (5,),
        target_user: str | None = None,
        target_secret: bytes | None = None,
        challenge_length: int = DEFAULT_CHALLENGE_LENGTH,
        random: RandomSource = secrets.token_bytes,
    ) -> None:
        self._lookup = lookup
        self._algorithms = tuple(algorithms)
        self.target_user = target_user
        self._target_secret = target_secret
        self.challenge_length = challenge_length
        self._random = random
        self._algorithm: int | None = None
        self._identifier = 0
        self._challenge = b""
        self.user: str | None = None
        """The authenticated CHAP_N, once ``done``."""
        self.done = False

    def __repr__(self) -> str:
        return f"ChapAuthenticator(user={self.user!r}, done={self.done})"

    def receive(self, keys: Mapping[str, str]) -> TextPairs:
        if self.done:
            raise ProtocolError("CHAP keys received after CHAP finished")
        if self._algorithm is None:
            return self._challenge_initiator(keys)
        return self._check_response(keys)

    def _challenge_initiator(self, keys: Mapping[str, str]) -> TextPairs:
        offered = _need(keys, "CHAP_A").split(",")
        # List negotiation: the first of the initiator's values that we support.
        chosen = next(
            (int(a) for a in offered if a.isdigit() and int(a) in self._algorithms), None
        )
        if chosen is None:
            raise AuthenticationError(
                f"no common CHAP algorithm: initiator offered {','.join(offered)[:64]}, "
                f"we support {','.join(map(str, self._algorithms))}"
            )
        self._algorithm = chosen
        self._identifier = self._random(1)[0]
        self._challenge = self._random(self.challenge_length)
        return [
            ("CHAP_A", str(chosen)),
            ("CHAP_I", str(self._identifier)),
            ("CHAP_C", encode_binary(self._challenge)),
        ]

    def _check_response(self, keys: Mapping[str, str]) -> TextPairs:
        assert self._algorithm is not None
        name = _need(keys, "CHAP_N")
        got = decode_binary("CHAP_R", _need(keys, "CHAP_R"))
        secret = self._lookup(name)
        if secret is None:
            raise AuthenticationError(f"unknown CHAP user {name[:64]!r}")
        expected = chap_response(self._algorithm, self._identifier, secret, self._challenge)
        if not hmac.compare_digest(got, expected):
            raise AuthenticationError(f"CHAP response of user {name[:64]!r} does not match")
        self.user = name
        self.done = True
        if "CHAP_I" not in keys and "CHAP_C" not in keys:
            return []
        if self._target_secret is None or self.target_user is None:
            raise AuthenticationError("initiator asked for mutual CHAP; no target secret set")
        identifier = _identifier(_need(keys, "CHAP_I"))
        challenge = _challenge(keys)
        if challenge == self._challenge:
            raise AuthenticationError("initiator reflected our CHAP challenge back")
        response = chap_response(self._algorithm, identifier, self._target_secret, challenge)
        return [("CHAP_N", self.target_user), ("CHAP_R", encode_binary(response))]
