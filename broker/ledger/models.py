"""SQLAlchemy tables of the ledger: grants, the hash-chained audit events, the chain head, and the transparency log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, configure_mappers, mapped_column

from broker import context

ACTIVE = "active"
REVOKE_PENDING = "revoke_pending"
FINAL_STATUSES = ("completed", "revoked", "expired", "superseded")


@dataclass
class Event:
    """An audit event before it is chained; `detail` holds no secret and no token."""

    kind: str
    subject: str | None = None
    boundary: str | None = None
    task: str | None = None
    grant_id: str | None = None
    actor: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    request_scoped: bool = field(default=True, repr=False, compare=False)  # False: an aggregate of many requests

    def __post_init__(self) -> None:
        # captured here, on the request's thread: the ledger writer that chains it runs on its own
        request_id = context.request_id() if self.request_scoped else None
        if request_id and "request_id" not in self.detail:
            self.detail = {**self.detail, "request_id": request_id}


class Base(MappedAsDataclass, DeclarativeBase):
    """Declarative base; rows are dataclasses so callers never touch SQL."""


class Grant(Base):
    """One issued credential: who, which task, which boundary, until when, and how to revoke it.

    Never the secret: `handle` is a lease id, token accessor or JWT `jti`; `fingerprint` a SHA-256.
    """

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(512))
    attestor: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(128))
    boundary: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(32))
    scopes: Mapped[str] = mapped_column(String(512))
    handle: Mapped[str] = mapped_column(String(256))
    fingerprint: Mapped[str] = mapped_column(String(80))
    issued_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    cnf_jkt: Mapped[str | None] = mapped_column(String(64), default=None)
    end_status: Mapped[str | None] = mapped_column(String(16), default=None)
    end_reason: Mapped[str | None] = mapped_column(String(256), default=None)
    end_actor: Mapped[str | None] = mapped_column(String(512), default=None)
    ended_at: Mapped[float | None] = mapped_column(Float, default=None)
    revocation_id: Mapped[str | None] = mapped_column(String(64), default=None)
    revoke_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, default=None)
    cnf_x5t: Mapped[str | None] = mapped_column(String(64), default=None)  # RFC 8705 `x5t#S256`
    # provenance: the policy revision (content hash) and the id of the rule that allowed the grant
    policy_revision: Mapped[str | None] = mapped_column(String(64), default=None)
    rule: Mapped[str | None] = mapped_column(String(128), default=None)
    # a derived grant (a delegated token, a transaction token): the grant it was exchanged from; it ends with it
    parent_grant_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # the backend handle this credential hangs off (a Vault parent token's accessor, one per subject and
    # boundary): revoking that one ends every credential under it, so a frozen subject is one call per boundary
    parent_handle: Mapped[str | None] = mapped_column(String(256), default=None)

    __table_args__ = (
        Index("ix_grants_status_expires", "status", "expires_at"),
        Index("ix_grants_status_next_attempt", "status", "next_attempt_at"),
        Index("ix_grants_subject_boundary_issued", "subject", "boundary", "issued_at"),  # abuse limits: recent
        Index("ix_grants_subject_boundary_active", "subject", "boundary", "status", "expires_at"),  # and active
        Index("ix_grants_boundary", "boundary"),
        Index("ix_grants_task_subject", "task", "subject"),
        Index("ix_grants_revocation", "revocation_id"),
        Index("ix_grants_rule_status", "rule", "status"),
        Index("ix_grants_policy_revision_status", "policy_revision", "status"),
        Index("ix_grants_parent", "parent_grant_id"),  # the cascade: every grant derived from one that ends
    )

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Grant:
        """A detached Grant holding a copy of `row` (every column), built as the ORM builds one it loads:
        straight into the instance's dict. `Grant(**row)` runs an attribute event per column, and cost more than
        the rest of a grant's row work (22 µs against 3 µs here); introspection, completion and issuance
        build one per call. Never for a row not complete: a missing column reads as unloaded."""
        if not cls.__mapper__.configured:  # the instrumentation this reads through is set up on first use
            configure_mappers()
        grant = cls.__mapper__.class_manager.new_instance()
        grant.__dict__.update(row)
        return grant


# a new grant's columns before it is filled in: the table's own defaults (`active`, no attempts, the rest None)
GRANT_DEFAULTS = {c.key: (c.default.arg if c.default is not None else None) for c in Grant.__table__.columns}


class AuditEvent(Base):
    """One decision, chained: `hash = SHA-256(prev_hash ‖ canonical JSON of the event)`."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(512))
    boundary: Mapped[str | None] = mapped_column(String(128))
    task: Mapped[str | None] = mapped_column(String(128))
    grant_id: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(512))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_kind_ts", "kind", "ts"),
        Index("ix_audit_subject_ts", "subject", "ts"),
        Index("ix_audit_boundary_ts", "boundary", "ts"),
        Index("ix_audit_grant", "grant_id"),
        Index("ix_audit_ts", "ts"),
    )


class SigningKeyRow(Base):
    """A broker signing key shared by replicas: the private key sealed with AES-GCM under the KEK."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    retired_at: Mapped[float | None] = mapped_column(Float)
    kek_id: Mapped[str] = mapped_column(String(32))
    sealed: Mapped[str] = mapped_column(Text)


class ChainHead(Base):
    """The single row every append locks: last sequence number and hash of the chain."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # int4 would run out after ~2e9 events
    hash: Mapped[str] = mapped_column(String(64))


class Freeze(Base):
    """An operator's deny-list entry: no new grant for this subject or boundary until lifted."""

    __tablename__ = "freezes"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "subject" or "boundary"
    value: Mapped[str] = mapped_column(String(512), primary_key=True)
    reason: Mapped[str] = mapped_column(String(256))
    actor: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float] = mapped_column(Float)
    revocation_id: Mapped[str | None] = mapped_column(String(64), default=None)


class Revocation(Base):
    """One operator revocation: its selector, reason and how many grants it matched; progress is in `grants`."""

    __tablename__ = "revocations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(256))
    actor: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float] = mapped_column(Float)
    matched: Mapped[int] = mapped_column(Integer)


class IdempotencyKey(Base):
    """A caller's `Idempotency-Key`, bound to the grant it produced until that grant expires.

    `key_hash` is SHA-256 of (attestor, subject, key): keys are per caller and never stored as given.
    """

    __tablename__ = "idempotency_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_fp: Mapped[str] = mapped_column(String(64))
    grant_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class DpopReplay(Base):
    """A DPoP proof seen by any replica: SHA-256 of its key thumbprint and `jti`, kept until it could no longer pass."""

    __tablename__ = "dpop_replay"

    jti_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_dpop_replay_expires", "expires_at"),)


class DenialWindow(Base):
    """Refusals of unverified identity tokens, counted per window and token fingerprint (never the token).

    Only the first refusal of a bucket is chained as a `denied` event; the rest only count here, so a
    flood of junk tokens cannot grow the chain (broker/grants/limits.py).
    """

    __tablename__ = "denial_windows"

    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    token_fp: Mapped[str] = mapped_column(String(80), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[float] = mapped_column(Float)
    last_at: Mapped[float] = mapped_column(Float)


class Setting(Base):
    """Facts of this deployment shared by every replica on the database, e.g. its `deployment_id`."""

    __tablename__ = "broker_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class LogHead(Base):
    """The transparency log's size and right frontier (hex hashes, largest subtree first); one row."""

    __tablename__ = "log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    frontier: Mapped[list[str]] = mapped_column(JSON)


class LogNode(Base):
    """A complete subtree of the log: leaves [idx·2^level, (idx+1)·2^level) hash to `hash` (hex)."""

    __tablename__ = "log_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))


class LogCheckpoint(Base):
    """One signed checkpoint; sizes only grow, one row per size, so replicas cannot fork the sequence."""

    __tablename__ = "log_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text)
    cosignatures: Mapped[dict[str, str]] = mapped_column(JSON, default_factory=dict)  # witness name → line


class LogKeyRow(Base):
    """The log's Ed25519 signer key, sealed with AES-GCM under the KEK like the signing keys."""

    __tablename__ = "log_keys"

    kid: Mapped[str] = mapped_column(String(300), primary_key=True)  # name+hex key id
    created_at: Mapped[float] = mapped_column(Float)
    retired_at: Mapped[float | None] = mapped_column(Float)
    kek_id: Mapped[str] = mapped_column(String(32))
    sealed: Mapped[str] = mapped_column(Text)


class LogWitness(Base):
    """Push state of one configured witness: the size it last cosigned, and its last refusal."""

    __tablename__ = "log_witnesses"

    url: Mapped[str] = mapped_column(String(512), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(256), default=None)


class SignalStream(Base):
    """A signal receiver's Shared Signals stream: its audience, boundaries, delivery and delivery state."""

    __tablename__ = "signal_streams"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(512))  # the receiver's subject; only it may see the stream
    owner_attestor: Mapped[str] = mapped_column(String(64))
    audience: Mapped[str] = mapped_column(String(512), unique=True)
    boundaries: Mapped[list[str]] = mapped_column(JSON)
    events_requested: Mapped[list[str]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32))  # urn:ietf:rfc:8935 (push) or urn:ietf:rfc:8936 (poll)
    endpoint_url: Mapped[str | None] = mapped_column(String(1024))
    description: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="enabled")
    status_reason: Mapped[str | None] = mapped_column(String(256), default=None)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    sent: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # consecutive failed pushes
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)  # one replica pushes a stream at a time
    last_error: Mapped[str | None] = mapped_column(String(200), default=None)
    last_sent_at: Mapped[float | None] = mapped_column(Float, default=None)

    __table_args__ = (Index("ix_signal_streams_owner", "owner"),)


class SignalOutboxRow(Base):
    """One SET waiting for its stream, in order (`seq` per stream); written with the event it reports."""

    __tablename__ = "signal_outbox"

    stream_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    jti: Mapped[str] = mapped_column(String(64))
    claims: Mapped[dict[str, Any]] = mapped_column(JSON)  # the SET's claims; signed when sent
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_signal_outbox_jti", "stream_id", "jti"),)
