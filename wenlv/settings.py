"""Every environment variable the product reads, in one validated object loaded once.

`get_settings()` reads the environment the first time it is called (not at import), so a
test or a CLI flag can set variables first; `reset_settings()` forgets the cached copy.
The README's environment table is generated from this class (`settings_table()`), and a
test fails when the two drift apart. Secrets are `SecretStr`: `masked()` never shows them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from wenlv.errors import WenlvError

HOME = Path.home()
MASK = "******"


class Settings(BaseSettings):
    """Deployment settings. Each field's env name is its alias; defaults are embedded."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    # Spark
    spark_master: str = Field("local[*]", alias="SPARK_MASTER",
                              description="Spark master URL (local mode binds to 127.0.0.1)")
    spark_driver_memory: str = Field("4g", alias="WENLV_SPARK_DRIVER_MEMORY", description="Spark driver memory")
    shuffle_partitions: int = Field(8, ge=1, alias="WENLV_SHUFFLE_PARTITIONS",
                                    description="spark.sql.shuffle.partitions for the feature jobs")
    # PSI
    libsodium: str | None = Field(None, alias="WENLV_LIBSODIUM",
                                  description="path of libsodium (≥ 1.0.18) for ristretto255; unset: the system's")
    # MLflow
    mlflow_tracking_uri: str | None = Field(None, alias="MLFLOW_TRACKING_URI",
                                            description="MLflow store; unset: sqlite:///mlflow/mlflow.db in the "
                                                        "checkout (the demo: its workdir)")
    gate_tolerance: float = Field(0.01, ge=0, alias="WENLV_GATE_TOLERANCE",
                                  description="quality gate: how far (absolute NDCG@10) a new version may fall below "
                                              "the champion and still be promoted")
    # Online store and serving
    redis_url: str | None = Field(None, alias="REDIS_URL", description="online store; unset: SQLite")
    online_sqlite: Path = Field(HOME / ".wenlv" / "online_store.sqlite", alias="WENLV_ONLINE_SQLITE",
                                description="SQLite online store file, when REDIS_URL is unset")
    api_keys_db: Path = Field(HOME / ".wenlv" / "api_keys.sqlite", alias="WENLV_API_KEYS",
                              description="API key database (SQLite)")
    api_pepper: SecretStr | None = Field(None, alias="WENLV_API_PEPPER",
                                         description="secret mixed into stored API key hashes; unset: a random "
                                                     "pepper kept beside the key database")
    session_secret: SecretStr | None = Field(None, alias="WENLV_SESSION_SECRET",
                                             description="secret that signs dashboard session cookies; unset: a "
                                                         "random secret kept beside the key database")
    session_ttl_s: int = Field(8 * 3600, ge=60, le=7 * 24 * 3600, alias="WENLV_SESSION_TTL",
                               description="seconds a dashboard session cookie stays valid after login")
    index_cache: Path = Field(HOME / ".cache" / "wenlv" / "indexes", alias="WENLV_INDEX_CACHE",
                              description="folder for FAISS indexes built when a version has none")
    faiss_threads: int = Field(1, ge=1, alias="WENLV_FAISS_THREADS",
                               description="OpenMP threads per FAISS search (1: the server's workers parallelise)")
    itinerary_time_limit_s: float = Field(0.5, gt=0, alias="WENLV_ITINERARY_TIME_LIMIT",
                                          description="solver seconds per itinerary request")
    itinerary_workers: int = Field(1, ge=1, le=64, alias="WENLV_ITINERARY_WORKERS",
                                   description="processes that solve itineraries (off the event loop, so "
                                               "recommendations are not starved)")
    itinerary_queue: int = Field(32, ge=0, alias="WENLV_ITINERARY_QUEUE",
                                 description="itinerary requests that may wait for a solver; more are answered 503 "
                                             "with Retry-After")
    store_timeout_s: float = Field(0.1, gt=0, le=5, alias="WENLV_STORE_TIMEOUT",
                                   description="seconds one online-store call on a request's path may take before "
                                               "the request goes on without it (and the circuit breaker opens)")
    log_format: Literal["text", "json"] = Field("text", alias="WENLV_LOG_FORMAT",
                                                description="log lines as text, or one JSON object per line (time, "
                                                            "level, logger, message, request_id)")
    access_log: bool = Field(False, alias="WENLV_ACCESS_LOG",
                             description="log one line per HTTP request (method, route template, status, ms, "
                                         "request id; never the path, which carries tokens); off by default: a "
                                         "line per request costs server CPU")
    max_body_bytes: int = Field(1_048_576, ge=1, alias="WENLV_MAX_BODY_BYTES",
                                description="largest request body the API reads (bigger: 413 before reading it)")
    body_timeout_s: float = Field(10.0, gt=0, alias="WENLV_BODY_TIMEOUT",
                                  description="seconds a client may take to send a request body (then 408 and close)")
    header_timeout_s: float = Field(10.0, gt=0, alias="WENLV_HEADER_TIMEOUT",
                                    description="seconds a client may take to send a request's headers (then the "
                                                "connection is closed)")
    rate_limit_key: str = Field(
        "visitor-app=200", alias="WENLV_RATE_LIMIT_KEY",
        description="requests per second one API key may make, by role: role=rate[,role=rate] (e.g. "
                    "visitor-app=200,marketer=20); a role not listed is not limited per key; empty: no per-key limits")
    rate_limit_tenant: str = Field(
        "visitor-app=1000", alias="WENLV_RATE_LIMIT_TENANT",
        description="requests per second all of a tenant's keys of one role may make together: role=rate[,role=rate]; "
                    "empty: no per-tenant limits")
    rate_limit_burst_s: float = Field(2.0, gt=0, le=3600, alias="WENLV_RATE_LIMIT_BURST",
                                      description="burst allowance in seconds of the rate: a bucket holds rate x this "
                                                  "many requests (at least 1); over it: 429 with Retry-After")
    # Campaign and ledger database
    database_url: str | None = Field(None, alias="DATABASE_URL",
                                     description="campaign and ledger database (postgresql://...); unset: SQLite file")
    database_sqlite: Path = Field(HOME / ".wenlv" / "wenlv.sqlite", alias="WENLV_DATABASE_SQLITE",
                                  description="SQLite campaign and ledger database, when DATABASE_URL is unset")
    # Ledger
    events_max_batch: int = Field(1000, ge=1, le=10_000, alias="WENLV_EVENTS_MAX_BATCH",
                                  description="most events one POST /v1/events may carry (larger batches get 413)")
    recommendation_holdout: float = Field(0.05, ge=0, lt=1, alias="WENLV_RECOMMENDATION_HOLDOUT",
                                          description="share of visitors who get the non-personalised list, to measure "
                                                      "the recommender's incremental revenue (0: none)")
    holdout_key: SecretStr | None = Field(None, alias="WENLV_HOLDOUT_KEY",
                                          description="key of the recommendation holdout's hash (replicas must share "
                                                      "it); unset: a 0600 file beside the SQLite database")
    served_lists_queue: int = Field(50_000, ge=1, alias="WENLV_SERVED_LISTS_QUEUE",
                                    description="served lists waiting for the ledger before new ones are dropped "
                                                "(counted in wenlv_served_lists_dropped_total)")
    served_lists_flush_s: float = Field(1.0, gt=0, le=60, alias="WENLV_SERVED_LISTS_FLUSH",
                                        description="seconds between writes of served lists to the ledger: a crash "
                                                    "(kill -9) loses at most this long; a stop drains them. Longer "
                                                    "batches cost less CPU per list (SQLite: 28 us at 0.2 s, 12 at 1 s)")
    # Campaigns
    min_audience_size: int = Field(1000, ge=1, alias="WENLV_MIN_AUDIENCE_SIZE",
                                   description="smallest audience a campaign may export (a tenant may set its own)")
    export_secret: SecretStr | None = Field(None, alias="WENLV_EXPORT_SECRET",
                                            description="secret of the per-partner, per-campaign export pseudonyms; "
                                                        "unset: a random secret kept beside the SQLite database")
    campaign_features: Path | None = Field(None, alias="WENLV_CAMPAIGN_FEATURES",
                                           description="feature blocks the served model was trained on: the channel "
                                                       "consent of affinity and lookalike audiences computed by the API")
    campaign_scores: Path | None = Field(None, alias="WENLV_CAMPAIGN_SCORES",
                                         description="destination propensity scores for audiences computed by the API "
                                                     "(written by `wenlv campaign scores`); unset: such requests get 409")
    carrier_token_key: SecretStr | None = Field(None, alias="WENLV_CARRIER_TOKEN_KEY",
                                                description="the carrier's key for the user tokens it issues in PSI "
                                                            "alignment (it resolves them at delivery); unset: a 0600 "
                                                            "file beside the SQLite database")
    # Ledger (attribution and the data-asset register)
    ledger_window_days: int = Field(7, ge=1, le=365, alias="WENLV_LEDGER_WINDOW_DAYS",
                                    description="attribution window: days after a campaign ends (or a list is served) "
                                                "whose revenue counts, and the last-touch window")
    ledger_interval: Literal["bootstrap", "delta"] = Field(
        "bootstrap", alias="WENLV_LEDGER_INTERVAL",
        description="95% interval of incremental revenue: bootstrap over persons, or the delta method")
    ledger_bootstrap_reps: int = Field(1000, ge=100, le=100_000, alias="WENLV_LEDGER_BOOTSTRAP_REPS",
                                       description="bootstrap resamples per interval (seeded: reports are repeatable)")
    ledger_discount_rate: float = Field(0.08, gt=-1, lt=1, alias="WENLV_LEDGER_DISCOUNT_RATE",
                                        description="income approach: annual discount rate of attributed cash flows")
    ledger_growth: float = Field(0.0, gt=-1, lt=1, alias="WENLV_LEDGER_GROWTH",
                                 description="income approach: annual growth of attributed cash flows over the "
                                             "remaining life")
    # Party services (wenlv party serve / --parties name=URL)
    party_tls_dir: Path = Field(HOME / ".wenlv" / "tls", alias="WENLV_PARTY_TLS",
                                description="this organisation's key, its certificate and the pinned certificates "
                                            "of the others (`wenlv party certs`)")
    party_timeout_s: float = Field(300.0, gt=0, alias="WENLV_PARTY_TIMEOUT",
                                   description="seconds a party may take to answer one protocol call")
    party_retries: int = Field(4, ge=0, le=20, alias="WENLV_PARTY_RETRIES",
                               description="connection retries (exponential backoff) before a party counts as away")
    # BLAS
    openblas_num_threads: int = Field(1, ge=1, alias="OPENBLAS_NUM_THREADS",
                                      description="BLAS threads (implicit ALS wants 1)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The effective settings, read from the environment once; bad values name the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{_env_name(e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors())
        raise WenlvError(f"invalid environment setting — {problems}") from None


def reset_settings() -> None:
    """Forget the cached settings (tests that change the environment, `wenlv config show`)."""
    get_settings.cache_clear()


def _env_name(loc) -> str:
    field = loc[0] if loc else "?"
    info = Settings.model_fields.get(field)
    return info.alias if info is not None and info.alias else str(field)


def masked(settings: Settings | None = None) -> dict[str, str]:
    """Env name -> effective value as text: secrets and passwords inside URLs as ******, unset as ""."""
    settings = settings or get_settings()
    out = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = MASK
        elif isinstance(value, str):
            value = mask_url_password(value)
        out[info.alias] = "" if value is None else str(value)
    return out



def mask_url_password(value: str) -> str:
    """`redis://:pw@host/0` -> `redis://:******@host/0`; text without a URL password unchanged."""
    try:
        parts = urlsplit(value)
    except ValueError:  # not a URL at all (e.g. an unbalanced "[")
        return value
    if not parts.password:
        return value
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def settings_table() -> str:
    """The README's environment table (Markdown), generated from the class."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for info in Settings.model_fields.values():
        default = info.default
        if isinstance(default, Path):
            default = str(default).replace(str(HOME), "~")
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{info.alias}` | {info.description} | {shown} |")
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- settings table: generated by `wenlv config table --readme README.md`; do not edit -->"
TABLE_END = "<!-- end of settings table -->"


def readme_with_table(readme: str) -> str:
    """`readme` with the text between the table markers replaced by `settings_table()`."""
    try:
        head, rest = readme.split(TABLE_BEGIN, 1)
        _, tail = rest.split(TABLE_END, 1)
    except ValueError:
        raise WenlvError(f"the README has no settings table markers ({TABLE_BEGIN} … {TABLE_END})") from None
    return f"{head}{TABLE_BEGIN}\n{settings_table()}{TABLE_END}{tail}"
