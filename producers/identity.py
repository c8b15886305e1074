"""Who is calling: signed bearer tokens and pseudonymous subject tokens.

Production takes identity from the government's single sign-on (统一身份认证). Here the demo
issues the same kind of assertion itself: an HS256 JWT signed with ONETHING_TOKEN_SECRET,
carrying the role, the channel (online, window clerk, home visit 帮办代办), the acting
staff member and, for department staff, the department.

The subject of a person's token is never the resident ID: it is `subject_token(resident_id)`,
an HMAC of the ID under ONETHING_PSEUDONYM_SECRET. Events carry only that token in
`actor.id_token`, so the log can be read without learning who applied, and a leaked token
cannot be turned back into an ID without the secret. The two secrets are separate so the
signing secret can be rotated without changing every person's pseudonym.

Lifetimes and scopes: a staff token (clerk, department, supervisor, register) lives at most
`STAFF_TTL_MAX_S` (8 hours, a working day) — a longer one is refused when verified, whoever
signed it; clerk, department and supervisor tokens name the acting staff member (`staff_id`), so
no whole department acts as one subject. The status link printed on a receipt is the applicant's
token bound to one case with `scope: "status:read"`: it lives 60 days and only reads; acting
on the case (withdraw, supplement, rate, report) needs the applicant's own login.

Environment:
  ONETHING_TOKEN_SECRET      HMAC secret that signs tokens (default: an INSECURE dev value)
  ONETHING_PSEUDONYM_SECRET  HMAC secret that derives subject tokens (default: INSECURE dev value)
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, replace

import jwt

from events.envelope import CHANNELS, ROLES, Actor

TOKEN_SECRET_ENV = "ONETHING_TOKEN_SECRET"
PSEUDONYM_SECRET_ENV = "ONETHING_PSEUDONYM_SECRET"
#: INSECURE defaults so the local demo works out of the box; set both variables anywhere else.
DEV_TOKEN_SECRET = "onething-dev-INSECURE-token-secret-change-me"
DEV_PSEUDONYM_SECRET = "onething-dev-INSECURE-pseudonym-secret-change-me"
ISSUER = "onething-demo-sso"
ALGORITHM = "HS256"
DEFAULT_TTL_S = 8 * 3600            # a working day's session
STAFF_TTL_MAX_S = 8 * 3600          # no staff token lives longer (refused at verify time)
STATUS_LINK_TTL_S = 60 * 24 * 3600  # the status link printed on a receipt (read-only scope)
STATUS_READ = "status:read"         # the scope of the status link: it reads one case, nothing else
SCOPES = frozenset({STATUS_READ})
STAFF_ROLES = frozenset({"clerk", "department", "supervisor", "register"})
#: staff roles whose tokens must name the acting staff member
NAMED_STAFF_ROLES = frozenset({"clerk", "department", "supervisor"})

#: the channel of an application the government offered and the applicant accepted (主动服务);
#: set by the inbox's accept (Identity.accepting_offer), never by a token
PROACTIVE_CHANNEL = "proactive"
#: which channels each role may act through (with a token)
ROLE_CHANNELS: dict[str, frozenset[str]] = {
    "applicant": frozenset({"online"}),
    "clerk": frozenset({"window", "home_visit"}),
    "department": frozenset({"department"}),
    "supervisor": frozenset({"online", "window", "system"}),
    "register": frozenset({"register"}),
    "system": frozenset({"system"}),
}


class InvalidToken(Exception):
    """No token, a bad signature, an expired token or claims that do not fit together."""


def token_secret() -> str:
    return os.environ.get(TOKEN_SECRET_ENV) or DEV_TOKEN_SECRET


def pseudonym_secret() -> str:
    return os.environ.get(PSEUDONYM_SECRET_ENV) or DEV_PSEUDONYM_SECRET


def using_dev_secrets() -> bool:
    return token_secret() == DEV_TOKEN_SECRET or pseudonym_secret() == DEV_PSEUDONYM_SECRET


def subject_token(resident_id: str, secret: str | None = None) -> str:
    """The pseudonymous token of a person: stable, not reversible without the secret."""
    digest = hmac.new((secret or pseudonym_secret()).encode(), resident_id.strip().upper().encode(),
                      hashlib.sha256).hexdigest()
    return "p_" + digest[:32]


def staff_subject(staff_id: str) -> str:
    """The subject of a staff member's token (staff ids are work numbers, not personal data)."""
    return f"staff_{staff_id}"


@dataclass(frozen=True)
class Identity:
    subject: str
    role: str
    channel: str
    staff_id: str | None = None
    department: str | None = None
    case_id: str | None = None  # a status-link token may only see this one case
    scope: str | None = None    # STATUS_READ: the receipt's link, read-only

    @property
    def read_only(self) -> bool:
        """A token bound to one case (the receipt's status link) reads it and does nothing else."""
        return self.scope == STATUS_READ or self.case_id is not None

    def actor(self, on_behalf_of: str | None = None) -> Actor:
        """The envelope actor: the applicant's token, with the acting staff on assisted channels."""
        return Actor(on_behalf_of or self.subject, self.role, self.channel, self.staff_id)

    def accepting_offer(self) -> "Identity":
        """The same applicant, filing through the `proactive` channel (主动服务: the government's offer,
        accepted in one step from the inbox). Never a token's claim — ROLE_CHANNELS does not let a
        token say `proactive` —, only what the inbox's accept makes of the caller's own login."""
        if self.role != "applicant" or self.read_only:
            raise InvalidToken("only the applicant's own login accepts an offer")
        return replace(self, channel=PROACTIVE_CHANNEL)


def _check_claims(subject: str, role: str, channel: str, staff_id: str | None, department: str | None,
                  scope: str | None = None, lifetime_s: float | None = None) -> None:
    if not subject or not isinstance(subject, str):
        raise InvalidToken("token has no subject")
    if role not in ROLES:
        raise InvalidToken("unknown role")
    if channel not in CHANNELS or channel not in ROLE_CHANNELS[role]:
        raise InvalidToken("role cannot act through this channel")
    if role in NAMED_STAFF_ROLES and not staff_id:
        raise InvalidToken(f"a {role} token names the acting staff member")
    if role == "department" and not department:
        raise InvalidToken("a department token names its department")
    if scope is not None and (scope not in SCOPES or role != "applicant"):
        raise InvalidToken("unknown scope")
    if role in STAFF_ROLES and lifetime_s is not None and lifetime_s > STAFF_TTL_MAX_S:
        raise InvalidToken("a staff token lives at most 8 hours")


def issue_token(subject_token: str, role: str, channel: str = "online", staff_id: str | None = None,
                department: str | None = None, *, case_id: str | None = None, scope: str | None = None,
                ttl_s: int = DEFAULT_TTL_S, secret: str | None = None, now: float | None = None) -> str:
    """A signed bearer token, as the single sign-on would issue it after logging someone in."""
    try:
        _check_claims(subject_token, role, channel, staff_id, department, scope, ttl_s)
    except InvalidToken as exc:
        raise ValueError(str(exc)) from None
    issued = int(now if now is not None else time.time())
    claims = {"iss": ISSUER, "sub": subject_token, "role": role, "channel": channel,
              "iat": issued, "exp": issued + int(ttl_s)}
    if staff_id:
        claims["staff_id"] = staff_id
    if department:
        claims["department"] = department
    if case_id:
        claims["case_id"] = case_id
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, secret or token_secret(), algorithm=ALGORITHM)


#: tokens verified lately: (token, secret) → (identity, valid from, valid until); see verify_token
_VERIFIED: dict[tuple[str, str], tuple[Identity, int, int]] = {}
_VERIFIED_MAX = 4096


def verify_token(token: str | None, secret: str | None = None) -> Identity:
    """The caller's identity, or InvalidToken. The reason never contains the token itself.

    A token that verified is remembered with its secret (the same token comes with every request
    of a session, and PyJWT spends ~150 µs on one): while the clock is inside the window its
    claims allowed (iat and nbf ≤ now < exp) it gives the same identity again without decoding.
    Everything else PyJWT checks depends only on the token and the secret; outside that window,
    or for a token not seen, it is decoded and checked in full, so the answer is always PyJWT's."""
    if not token:
        raise InvalidToken("no token")
    key = secret or token_secret()
    seen = _VERIFIED.get((token, key))
    if seen is not None and seen[1] <= time.time() < seen[2]:
        return seen[0]
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["sub", "exp", "iat", "iss"]})
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.PyJWTError:
        raise InvalidToken("token invalid") from None
    role, channel = claims.get("role"), claims.get("channel")
    staff_id, department = claims.get("staff_id"), claims.get("department")
    lifetime = int(claims["exp"]) - int(claims["iat"])
    _check_claims(claims["sub"], role, channel, staff_id, department, claims.get("scope"), lifetime)
    ident = Identity(claims["sub"], role, channel, staff_id, department, claims.get("case_id"), claims.get("scope"))
    # PyJWT accepted them, so these are integers (or floats it truncates the same way)
    valid_from = max(int(claims["iat"]), int(claims.get("nbf", claims["iat"])))
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[(token, key)] = (ident, valid_from, int(claims["exp"]))
    return ident


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def applicant_token(resident_id: str, *, ttl_s: int = DEFAULT_TTL_S) -> str:
    """Demo sign-on: what SSO hands a citizen who logged in with this resident ID."""
    return issue_token(subject_token(resident_id), "applicant", "online", ttl_s=ttl_s)


def clerk_token(staff_id: str, channel: str = "window", *, ttl_s: int = DEFAULT_TTL_S) -> str:
    return issue_token(staff_subject(staff_id), "clerk", channel, staff_id=staff_id, ttl_s=ttl_s)


def department_token(department: str, staff_id: str, *, ttl_s: int = DEFAULT_TTL_S) -> str:
    """A department staff member's login: the department and the staff member's work number."""
    return issue_token(staff_subject(staff_id), "department", "department", staff_id=staff_id,
                       department=department, ttl_s=ttl_s)


def supervisor_token(staff_id: str, *, ttl_s: int = DEFAULT_TTL_S) -> str:
    return issue_token(staff_subject(staff_id), "supervisor", "online", staff_id=staff_id, ttl_s=ttl_s)


def status_link_token(applicant_subject: str, case_id: str, *, ttl_s: int = STATUS_LINK_TTL_S) -> str:
    """The receipt's status link: reads this one case, for 60 days; acts on nothing."""
    return issue_token(applicant_subject, "applicant", "online", case_id=case_id, scope=STATUS_READ, ttl_s=ttl_s)
