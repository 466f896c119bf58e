"""Settings: one typed object from env (prefix BROKER_) and a YAML file, validated at start-up."""

from __future__ import annotations

import difflib
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import BadRequest, ConfigError
from broker.config_x509 import (
    ClientCertHeaderConfig,
    TlsConfig,
    X509AttestorConfig,
    refuse_dev_trust_domain,
    resolve_bundles,
)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
NAME = r"^[a-z0-9][a-z0-9._:/-]{0,127}$"
SCOPE = r"^[a-z][a-z0-9_.-]{0,63}$"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_TTL = 300  # a grant's TTL when neither the request nor the boundary names one
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant a report can print
# the development identity issuer of `broker dev` (broker/dev.py): refused outside development and test
DEV_ISSUER = "https://dev-issuer.broker.invalid"
DEV_KID = "dev-issuer-1"


def parse_duration(value: Any) -> int:
    """Seconds from an int or a string like `90`, `90s`, `15m`, `1h`, `2d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 15m")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (use seconds or 30s, 15m, 1h, 1d)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def instant(value: str | None, now: float) -> float | None:
    """A time bound: ISO 8601, epoch seconds, or a duration ago such as `24h` or `15m`."""
    if value is None or value == "":
        return None
    moment = _moment(value, now)
    if moment is None or not 0 <= moment <= LATEST:
        raise BadRequest(f"{value[:40]!r} is not a time: use ISO 8601, epoch seconds or a duration like 24h "
                         "(between 1970 and 9999)")  # fmt: skip
    return moment


def _moment(value: str, now: float) -> float | None:
    if re.fullmatch(r"[0-9]{1,15}(\.[0-9]{1,20})?", value) and float(value) > 10**8:
        return float(value)
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


Duration = Annotated[int, BeforeValidator(parse_duration), Field(gt=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttestorConfig(Strict):
    """One trusted identity issuer and how its tokens become a subject."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    preset: Literal["kubernetes", "github_actions", "spiffe_jwt", "oidc"]
    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"], min_length=1)
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    # fetched keys from a server with its own CA that wants a caller token: the Kubernetes API server
    # in-cluster (its kube-root-ca.crt bundle, the pod's service-account token; re-read every fetch)
    jwks_ca_file: Path | None = None
    jwks_token_file: Path | None = None
    subject_claim: str = "sub"
    trust_domain: str | None = None
    allow_extra_audiences: bool = False
    leeway: Duration = 30
    max_token_lifetime: Duration = 86400
    jwks_cache_ttl: Duration = 300
    jwks_min_refresh_interval: Duration = 10
    jwks_timeout: float = Field(default=5.0, gt=0, le=30)
    jwks_max_bytes: int = Field(default=262_144, gt=0, le=4_194_304)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms {bad} are not allowed; choose from {sorted(ASYMMETRIC_ALGORITHMS)}")
        return value

    @field_validator("leeway")
    @classmethod
    def _small_skew(cls, value: int) -> int:
        if value > 300:
            raise ValueError("leeway above 300 seconds is not allowed")
        return value

    @model_validator(mode="after")
    def _preset_needs(self) -> AttestorConfig:
        if self.jwks_uri and self.jwks_file:
            raise ValueError("set jwks_uri or jwks_file, not both")
        if self.jwks_file and (self.jwks_ca_file or self.jwks_token_file):
            raise ValueError("jwks_ca_file and jwks_token_file are for fetched keys, not jwks_file")
        if self.preset == "spiffe_jwt" and not self.trust_domain:
            raise ValueError("preset spiffe_jwt needs trust_domain")
        for url in filter(None, [self.jwks_uri, self.issuer if not self.jwks_file else None]):
            if not re.match(r"^https?://", url) and self.preset != "kubernetes":
                raise ValueError(f"{url!r} must be an http(s) URL")
        return self


class ScopeConfig(Strict):
    """What one scope maps to in the backend (empty for the jwt backend)."""

    token_role: str | None = None
    path: str | None = None
    policies: list[str] = Field(default_factory=list)
    # for `broker vault plan`: policy name -> HCL rules, and extra engine-role parameters (db_name, statements)
    rules: dict[str, str] = Field(default_factory=dict)
    role: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules_name_policies(self) -> ScopeConfig:
        unknown = sorted(set(self.rules) - set(self.policies))
        if unknown:
            raise ValueError(f"rules given for {unknown}, which are not in this scope's policies")
        return self


class LimitsConfig(Strict):
    """Abuse limits on issuance, per subject (and attestor) at one boundary; `null` turns one off."""

    max_active_grants: int | None = Field(default=50, gt=0)
    issue_rate: int | None = Field(default=60, gt=0)  # grants issued per `issue_window`
    issue_window: Duration = 60

    def over(self, defaults: LimitsConfig) -> LimitsConfig:
        """These limits where set, the defaults elsewhere (a boundary overrides only what it names)."""
        return defaults.model_copy(update={name: getattr(self, name) for name in self.model_fields_set})


class WitnessConfig(Strict):
    """A C2SP tlog-witness the broker pushes its checkpoints to."""

    url: str = Field(pattern=r"^https?://")  # its submission prefix; add-checkpoint is appended
    key: str = Field(min_length=1)  # its cosignature verifier key, name+keyid+base64(0x04 ‖ public key)


class BoundaryConfig(Strict):
    """One trust boundary: one backend, a closed set of scopes, a TTL cap."""

    name: str = Field(pattern=NAME)
    backend: Literal["jwt", "vault_token", "vault_secret", "mcp"]
    scopes: dict[str, ScopeConfig] = Field(min_length=1)
    max_ttl: Duration = 900
    default_ttl: Duration | None = None
    audience: str | None = None
    # backend `mcp`: the MCP server's canonical URI (RFC 8707 resource indicator); its tools are the scopes
    resource_uri: str | None = None
    require_dpop: bool = False
    connection: dict[str, Any] = Field(default_factory=dict)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @property
    def usual_ttl(self) -> int:
        """A grant's TTL when the request names none: `default_ttl`, else DEFAULT_TTL, within the cap."""
        return min(self.default_ttl or DEFAULT_TTL, self.max_ttl)

    @field_validator("scopes", mode="before")
    @classmethod
    def _list_or_map(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {scope: {} for scope in value}
        return {key: ({} if item is None else item) for key, item in value.items()} if isinstance(value, dict) else value

    @field_validator("scopes")
    @classmethod
    def _scope_names(cls, value: dict[str, ScopeConfig]) -> dict[str, ScopeConfig]:
        for scope in value:
            if not re.match(SCOPE, scope):
                raise ValueError(f"scope {scope!r} must match {SCOPE}")
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> BoundaryConfig:
        if self.default_ttl and self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl is above max_ttl")
        for scope, cfg in self.scopes.items():
            if self.backend == "vault_token" and not cfg.token_role:
                raise ValueError(f"scope {scope!r}: a vault_token boundary maps each scope to a token_role")
            if self.backend == "vault_secret" and not cfg.path:
                raise ValueError(f"scope {scope!r}: a vault_secret boundary maps each scope to a path")
        _check_mcp(self)
        if self.require_dpop and self.backend not in ("jwt", "mcp"):
            # a Vault token or lease is used against Vault, which never asks for a proof: the flag would be cosmetic
            raise ValueError(
                f"boundary {self.name!r}: require_dpop works only with the jwt and mcp backends, not {self.backend}"
            )
        return self

    @property
    def jwt_audience(self) -> str:
        return self.resource_uri or self.audience or self.name


def canonical_resource_error(uri: str) -> str | None:
    """Why `uri` is not a canonical MCP server URI (RFC 8707 §2, MCP authorization), or None.

    Refused rather than normalised: tokens are matched on `aud` exactly, so the one spelling is configured.
    """
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        return "must be an https URI (http only on loopback)"
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "must name a host and no user info"
    if parts.fragment or "#" in uri or parts.query:
        return "must not have a fragment or a query"
    if uri != uri.strip() or parts.netloc != parts.netloc.lower() or not uri.startswith(parts.scheme + "://"):
        return "must have a lowercase scheme and host"
    if parts.path.endswith("/"):
        return "must not end with a slash"
    return None


def _check_mcp(boundary: BoundaryConfig) -> None:
    if boundary.backend != "mcp":
        if boundary.resource_uri is not None:
            raise ValueError("resource_uri is for mcp boundaries")
        return
    if boundary.resource_uri is None:
        raise ValueError(f"boundary {boundary.name!r}: an mcp boundary needs resource_uri (the server's canonical URI)")
    if boundary.audience is not None:
        raise ValueError(f"boundary {boundary.name!r}: an mcp boundary's audience is its resource_uri; drop audience")
    problem = canonical_resource_error(boundary.resource_uri)
    if problem:
        raise ValueError(f"boundary {boundary.name!r}: resource_uri {problem}")


class VaultConfig(Strict):
    """How the broker reaches and logs in to Vault/OpenBao."""

    addr: str = "http://127.0.0.1:8200"
    auth_method: Literal["token", "approle", "kubernetes"] = "token"
    token: str | None = Field(default=None, repr=False)
    token_file: Path | None = None
    role_id: str | None = None
    secret_id: str | None = Field(default=None, repr=False)
    secret_id_file: Path | None = None
    kubernetes_role: str | None = None
    kubernetes_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    auth_mount: str | None = None
    namespace: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_verify: bool = True
    timeout: float = Field(default=5.0, gt=0, le=60)
    # leases carry no metadata: False when another deployment mints from the same engine roles
    reconcile_unknown_leases: bool = True


class Settings(BaseSettings):
    """Everything the broker needs, built once by `load_settings` and passed in.

    Sources, strongest first: the arguments (CLI overrides), `BROKER_<FIELD>` environment variables
    (`BROKER_<SECTION>_<FIELD>` inside the `vault:` and `limits:` sections), the YAML file `config`.
    """

    model_config = SettingsConfigDict(
        env_prefix="BROKER_", env_nested_delimiter="_", env_nested_max_split=1, extra="forbid", frozen=True
    )

    env: Literal["production", "development", "test"] = "production"
    config: Path | None = None
    issuer: str = "http://127.0.0.1:8080"
    data_dir: Path = Path(".broker")
    database_url: str | None = None
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # who commits the hot path's ledger writes under `broker serve`: one writer process for all the
    # workers (broker/ledger/writer_process.py), or a writer thread in each; auto: a process when
    # serving more than one worker
    ledger_writer: Literal["auto", "process", "thread"] = "auto"
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=120)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    signing_algorithm: Literal["ES256", "EdDSA"] = "ES256"
    signing_keys: Literal["auto", "file", "database"] = "auto"
    key_encryption_key: str | None = Field(default=None, repr=False)
    key_encryption_key_file: Path | None = None
    policy_file: Path | None = None
    policy: dict[str, Any] | None = None
    # what a policy reload does to live grants it no longer allows (broker/grants/withdrawal.py)
    on_withdraw: Literal["revoke", "report"] = "revoke"
    attestors: list[AttestorConfig] = Field(default_factory=list)
    # X.509-SVIDs over mutual TLS (broker/config_x509.py, broker/identity/x509.py)
    x509_attestors: list[X509AttestorConfig] = Field(default_factory=list)
    tls: TlsConfig | None = None
    client_cert_header: ClientCertHeaderConfig | None = None
    boundaries: list[BoundaryConfig] = Field(default_factory=list)
    vault: VaultConfig | None = None
    max_body_bytes: int = Field(default=65_536, gt=0)
    dpop_replay_capacity: int = Field(default=500_000, ge=1)
    revoke_retry_max_delay: Duration = 60
    # RFC 8693 delegation: how many `act` hops a delegated token may carry (broker/grants/delegation.py)
    max_delegation_depth: int = Field(default=3, ge=1, le=16)
    # draft-ietf-oauth-transaction-tokens: the trust domain (`aud`) of transaction tokens; unset: none issued
    txn_token_trust_domain: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")
    worker_interval: float = Field(default=1.0, gt=0)
    signal_push_allow_http: bool = False  # Shared Signals push to http:// endpoints (loopback tests, dev)
    reconcile_grace: Duration = 30
    reconcile_interval: Duration = 300
    # stamped on every minted Vault credential; reconcile touches only its own (broker/ledger/deployment.py)
    deployment_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    dev_issuer: str | None = None
    log_origin: str | None = None
    log_checkpoint_interval: float = Field(default=1.0, gt=0)
    log_witnesses: list[WitnessConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    unverified_denial_window: Duration = 60
    unverified_denials_per_window: int = Field(default=20, gt=0)
    fault_injection: set[Literal["crash_after_mint", "crash_after_commit", "fail_ledger_after_mint"]] = Field(
        default_factory=set
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [b.name for b in self.boundaries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"boundary names must be unique: {dupes}")
        _refuse_shared_backend_roles(self.boundaries)
        uris = [b.resource_uri for b in self.boundaries if b.resource_uri]
        if len(uris) != len(set(uris)):
            raise ValueError("two mcp boundaries share a resource_uri")
        vault_boundaries = [b.name for b in self.boundaries if b.backend.startswith("vault_")]
        if vault_boundaries and self.vault is None:
            raise ValueError(f"boundaries {vault_boundaries} use Vault; add a `vault:` section")
        if self.fault_injection and self.env != "test":
            raise ValueError("fault_injection is allowed only when env is test")
        if self.dev_issuer and self.env == "production":
            raise ValueError("the development identity issuer is refused when env is production")
        if self.env == "production":
            _refuse_dev_attestors(self.attestors)
            refuse_dev_trust_domain(self.x509_attestors)
        names = [a.name for a in self.attestors] + [a.name for a in self.x509_attestors]
        if len(set(names)) != len(names):
            raise ValueError("attestor names must be unique across attestors and x509_attestors")
        return self

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def db_pool(self) -> dict[str, Any]:
        return {
            "pool_size": self.db_pool_size,
            "max_overflow": self.db_max_overflow,
            "pool_timeout": self.db_pool_timeout,
            "pool_recycle": self.db_pool_recycle,
        }

    @property
    def key_repository(self) -> Literal["file", "database"]:
        """Replicas share a server database, so by default their signing keys live there too."""
        if self.signing_keys != "auto":
            return self.signing_keys
        return "file" if self.database.startswith("sqlite") else "database"

    @property
    def log_name(self) -> str:
        """The transparency log's origin line (and its key's name): a schema-less URL."""
        return self.log_origin or self.issuer.split("://", 1)[-1].rstrip("/") + "/log"

    def boundary(self, name: str) -> BoundaryConfig | None:
        return next((b for b in self.boundaries if b.name == name), None)

    def mcp_boundary(self, resource_uri: str) -> BoundaryConfig | None:
        """The mcp boundary whose canonical URI is exactly `resource_uri`."""
        return next((b for b in self.boundaries if b.backend == "mcp" and b.resource_uri == resource_uri), None)

    def limits_for(self, boundary: BoundaryConfig) -> LimitsConfig:
        return boundary.limits.over(self.limits)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any, **_: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _EnvSource(settings_cls)
        path = init_settings.init_kwargs.get("config") or env().get("config")
        return init_settings, env, _YamlSource(settings_cls, Path(path) if path else None)


class _EnvSource(EnvSettingsSource):
    """`BROKER_<FIELD>` for every field; only model sections are split, so `BROKER_POLICY_FILE` stays one field."""

    def explode_env_vars(self, field_name: str, field: FieldInfo, env_vars: Any) -> dict[str, Any]:
        if not _is_section(field):
            return {}
        return super().explode_env_vars(field_name, field, env_vars)


def _is_section(field: FieldInfo) -> bool:
    return any(isinstance(t, type) and issubclass(t, BaseModel) for t in (field.annotation, *get_args(field.annotation)))


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML config file, weakest source: its folder anchors relative paths (`_resolve_paths`)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        return {**_read_yaml(self.path), "config": self.path}


def _refuse_shared_backend_roles(boundaries: list[BoundaryConfig]) -> None:
    """Promise 2: no Vault role, path or policy may serve two boundaries."""
    owner: dict[str, str] = {}
    for boundary in boundaries:
        for cfg in boundary.scopes.values():
            keys = [f"token role {cfg.token_role}"] if cfg.token_role else []
            keys += [f"path {cfg.path}"] if cfg.path else []
            keys += [f"policy {p}" for p in cfg.policies]
            for key in keys:
                other = owner.setdefault(key, boundary.name)
                if other != boundary.name:
                    raise ValueError(f"boundaries {other!r} and {boundary.name!r} share Vault {key}")


def _refuse_dev_attestors(attestors: list[AttestorConfig]) -> None:
    """Dev identities never work in production: not the dev issuer, not its key set under any name."""
    for attestor in attestors:
        if attestor.issuer.rstrip("/") == DEV_ISSUER or _is_dev_jwks(attestor):
            raise ValueError(f"attestor {attestor.name!r} trusts the development identity issuer of `broker dev`; "
                             "it is refused when env is production")


def _is_dev_jwks(attestor: AttestorConfig) -> bool:
    """The dev issuer's JWKS: its file in a dev data dir, its URL host, or a key with its key id."""
    if attestor.jwks_uri and urlsplit(attestor.jwks_uri).hostname == urlsplit(DEV_ISSUER).hostname:
        return True
    path = attestor.jwks_file
    if path is None:
        return False
    if path.name == "jwks.json" and path.parent.name == "dev-issuer":
        return True
    try:
        keys = json.loads(path.read_text()).get("keys", [])
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: the key set refuses it when it loads
    return any(isinstance(key, dict) and key.get("kid") == DEV_KID for key in keys)


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Build Settings from the YAML file (`config` or BROKER_CONFIG), env vars and overrides."""
    if config:
        overrides["config"] = Path(config)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, overrides.get("config") or _env_config())) from None
    if settings.env == "production":
        _refuse_unknown_env()
    return _resolve_paths(settings)


def refuse_embedded_ledger(settings: Settings) -> None:
    """`env: production` serves from a named database: the SQLite default would be one pod's private evidence,
    lost with the pod and invisible to the other replicas."""
    if settings.env == "production" and not settings.database_url:
        where = settings.config or "settings"
        raise ConfigError(f"{where}: env is production but no database_url is set (BROKER_DATABASE_URL or "
                          "`database_url:`); the embedded SQLite ledger is for env: development or test")  # fmt: skip


# read by the CLI and the SDK (`broker_client`), not settings of the broker
CLIENT_ENV = frozenset({"BROKER_URL", "BROKER_IDENTITY_TOKEN", "BROKER_IDENTITY_FILE", "BROKER_IDENTITY_COMMAND",
                        "BROKER_SPIFFE_JWT_FILE"})  # fmt: skip


def _refuse_unknown_env() -> None:
    """A misspelt `BROKER_DATABSE_URL` must not silently fall back to a default in production."""
    known = {f"BROKER_{name.upper()}" for name in Settings.model_fields} | CLIENT_ENV
    sections = [f"BROKER_{name.upper()}_" for name, field in Settings.model_fields.items() if _is_section(field)]
    unknown = sorted(n for n in os.environ if n.startswith("BROKER_") and n not in known
                     and not n.startswith(tuple(sections)))  # fmt: skip
    if unknown:
        hints = [f"{n} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(n, known, 1)) else n
                 for n in unknown]  # fmt: skip
        raise ConfigError(f"unknown environment variables in production: {', '.join(hints)}")


def production_by_env() -> bool:
    """BROKER_ENV says production: dev mode and dev tokens refuse to run, whatever their own config says."""
    return str(_EnvSource(Settings)().get("env", "")).lower() == "production"


def _env_config() -> Path | None:
    value = os.environ.get("BROKER_CONFIG")
    return Path(value) if value else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return loaded


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "settings"
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{where}: {field}: {err['msg']}")
    return "\n".join(lines)


def _resolve_paths(settings: Settings) -> Settings:
    """Relative paths in the YAML file are relative to that file's folder."""
    if not settings.config:
        return settings
    base = settings.config.parent
    updates: dict[str, Any] = {}
    if settings.policy_file and not settings.policy_file.is_absolute():
        updates["policy_file"] = base / settings.policy_file
    attestors = []
    for att in settings.attestors:
        files = {"jwks_file": att.jwks_file, "jwks_ca_file": att.jwks_ca_file, "jwks_token_file": att.jwks_token_file}
        relative = {name: base / path for name, path in files.items() if path and not path.is_absolute()}
        attestors.append(att.model_copy(update=relative) if relative else att)
    updates["attestors"] = attestors
    updates["x509_attestors"] = resolve_bundles(settings.x509_attestors, base)
    if settings.tls:
        tls = {k: v if v.is_absolute() else base / v for k, v in settings.tls.model_dump().items()}
        updates["tls"] = settings.tls.model_copy(update=tls)
    return settings.model_copy(update=updates)
