"""iSCSI URLs as libiscsi and QEMU write them.

``iscsi://[user[%password]@]host[:port]/target-iqn/lun`` with mutual CHAP as
``?target_user=..&target_password=..``; a portal URL (discovery) has no path.
CHAP credentials may also come from the environment so they stay out of shell
history and process listings: EARMARK_CHAP_USER / EARMARK_CHAP_SECRET and
EARMARK_CHAP_TARGET_USER / EARMARK_CHAP_TARGET_SECRET. Secrets never appear in
``repr`` or in error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import BadUrlError

DEFAULT_PORT = 3260
ENV_USER = "EARMARK_CHAP_USER"
ENV_SECRET = "EARMARK_CHAP_SECRET"
ENV_TARGET_USER = "EARMARK_CHAP_TARGET_USER"
ENV_TARGET_SECRET = "EARMARK_CHAP_TARGET_SECRET"


@dataclass(frozen=True, slots=True)
class IscsiUrl:
    host: str
    port: int = DEFAULT_PORT
    target: str | None = None
    """None for a portal URL (discovery)."""
    lun: int = 0
    user: str | None = None
    secret: str | None = field(default=None, repr=False)
    target_user: str | None = None
    target_secret: str | None = field(default=None, repr=False)

    @property
    def chap(self) -> tuple[str, str] | None:
        if self.user is None or self.secret is None:
            return None
        return self.user, self.secret

    @property
    def mutual(self) -> tuple[str, str] | None:
        if self.target_user is None or self.target_secret is None:
            return None
        return self.target_user, self.target_secret

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        """The URL without any secret, fit for logs and error messages."""
        auth = f"{self.user}@" if self.user else ""
        path = "" if self.target is None else f"/{self.target}/{self.lun}"
        return f"iscsi://{auth}{self.portal}{path}"


def parse_url(
    url: str, *, need_target: bool = True, environ: Mapping[str, str] | None = None
) -> IscsiUrl:
    """Parse ``url``; ``need_target`` False also accepts a bare portal URL.

    Credentials in the URL win over the environment; a user without a secret
    anywhere is an error here rather than a confusing login refusal later.
    """
    shown = _hide_secret(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrlError(f"bad iSCSI URL {shown!r}: {exc}") from None
    if parts.scheme != "iscsi":
        raise BadUrlError(f"bad iSCSI URL {shown!r}: it must start with iscsi://")
    host = parts.hostname
    if not host:
        raise BadUrlError(f"bad iSCSI URL {shown!r}: no host")
    target: str | None = None
    lun = 0
    path = parts.path.strip("/")
    if path:
        target_text, slash, lun_text = path.rpartition("/")
        if not slash or not target_text or "/" in target_text:
            raise BadUrlError(f"bad iSCSI URL {shown!r}: the path must be /target-iqn/lun")
        if not lun_text.isdigit() or int(lun_text) > 16383:
            raise BadUrlError(f"bad iSCSI URL {shown!r}: LUN {lun_text!r} is not 0..16383")
        target, lun = unquote(target_text), int(lun_text)
    elif need_target:
        raise BadUrlError(f"bad iSCSI URL {shown!r}: no /target-iqn/lun after the portal")
    env = environ if environ is not None else {}
    # libiscsi does not percent-decode credentials: '%' separates user and secret.
    user = parts.username or None
    secret: str | None = parts.password
    if user is not None and "%" in user:
        user, _, secret = user.partition("%")
    query = dict(parse_qsl(parts.query))
    unknown = set(query) - {"target_user", "target_password"}
    if unknown:
        raise BadUrlError(f"bad iSCSI URL {shown!r}: unknown argument {sorted(unknown)[0]!r}")
    user = user or env.get(ENV_USER) or None
    secret = secret or (env.get(ENV_SECRET) if user else None) or None
    target_user = query.get("target_user") or env.get(ENV_TARGET_USER) or None
    target_secret = query.get("target_password") or env.get(ENV_TARGET_SECRET) or None
    if user is not None and secret is None:
        raise BadUrlError(
            f"bad iSCSI URL {shown!r}: CHAP user {user!r} has no secret (write user%secret@ "
            f"or set {ENV_SECRET})"
        )
    if target_user is not None and (secret is None or target_secret is None):
        raise BadUrlError(
            f"bad iSCSI URL {shown!r}: mutual CHAP needs a user, its secret and target_password"
        )
    return IscsiUrl(host, port if port is not None else DEFAULT_PORT, target, lun, user, secret,
                    target_user, target_secret)


def _hide_secret(url: str) -> str:
    """The URL as it may be shown: any password replaced by ***."""
    head, at, tail = url.rpartition("@")
    if at and "%" in head:
        head = head.split("%", 1)[0] + "%***"
    elif at and head.count(":") >= 2:
        head = head.rsplit(":", 1)[0] + ":***"
    shown = f"{head}{at}{tail}" if at else url
    if "target_password=" in shown:
        before, _, after = shown.partition("target_password=")
        shown = before + "target_password=***" + ("&" + after.split("&", 1)[1] if "&" in after
                                                   else "")
    return shown
