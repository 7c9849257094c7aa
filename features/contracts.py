"""Data contracts: one definition per table, shared by the generator, validators and Spark jobs.

Every raw party table (DESIGN §4) and every feature-block table the Spark jobs write is
declared here once. Code that needs a schema asks this module for it (as pyarrow, as a
Spark StructType, or as documentation) instead of restating columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

SCHEMA_VERSION = "1.0"

PARTIES = ("tourism", "carrier", "internet")

# Logical types; each maps to one pyarrow type and one Spark SQL type.
_ARROW = {
    "string": "string",
    "int": "int64",
    "float": "float64",
    "bool": "bool",
    "date": "date32",
    "timestamp": "timestamp[us]",
}
_SPARK = {
    "string": "string",
    "int": "bigint",
    "float": "double",
    "bool": "boolean",
    "date": "date",
    "timestamp": "timestamp",
}


@dataclass(frozen=True)
class Field:
    """One column: its logical type, unit, meaning and whether it may be null."""

    name: str
    type: str
    doc: str
    unit: str = ""
    nullable: bool = False
    personal: bool = False  # personal data: never leaves its owner, never logged
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    def __post_init__(self):
        if self.type not in _ARROW:
            raise ValueError(f"field {self.name}: unknown type {self.type!r}")


@dataclass(frozen=True)
class Table:
    """A table of one party (or of the synthetic truth), stored as `<party>/<name>.parquet`."""

    party: str
    name: str
    doc: str
    fields: tuple[Field, ...]
    key: tuple[str, ...] = ()
    kind: str = "raw"  # raw | truth | block

    @property
    def qualified(self) -> str:
        return f"{self.party}.{self.name}"

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.qualified} has no column {name!r}")

    def arrow_schema(self):
        import pyarrow as pa  # lazy: every stage and the CLI read the contracts; few need pyarrow

        return pa.schema(
            [pa.field(f.name, pa.type_for_alias(_ARROW[f.type]), nullable=f.nullable) for f in self.fields]
        )

    def spark_schema(self):
        from pyspark.sql import types as T  # lazy: only the Spark jobs need pyspark

        return T.StructType(
            [T.StructField(f.name, T._parse_datatype_string(_SPARK[f.type]), f.nullable) for f in self.fields]
        )

    def spark_ddl(self) -> str:
        return ", ".join(f"{f.name} {_SPARK[f.type]}" for f in self.fields)

    def markdown(self) -> str:
        rows = [f"### `{self.party}/{self.name}` — {self.doc}", "",
                "| column | type | unit | nullable | meaning |", "|---|---|---|---|---|"]
        for f in self.fields:
            meaning = f.doc + (f" One of: {', '.join(f.choices)}." if f.choices else "")
            if f.personal:
                meaning += " **Personal data: stays with its owner.**"
            rows.append(f"| {f.name} | {f.type} | {f.unit} | {'yes' if f.nullable else 'no'} | {meaning} |")
        return "\n".join(rows)


F = Field
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
POI_CATEGORIES = ("scenic_area", "museum", "heritage_street", "theme_park", "hotel", "restaurant", "nightlife")
CHANNELS = ("ticket", "hotel", "meal", "app")

# ---------------------------------------------------------------- tourism (coordinator)
POIS = Table("tourism", "pois", "points of interest the tourism group operates or lists", (
    F("poi_id", "string", "stable POI identifier"),
    F("name", "string", "display name"),
    F("category", "string", "kind of place", choices=POI_CATEGORIES),
    F("city", "string", "city the POI is in"),
    F("lat", "float", "latitude (WGS84)", "degrees", min=-90, max=90),
    F("lon", "float", "longitude (WGS84)", "degrees", min=-180, max=180),
    F("open_time", "string", "daily opening time, local, HH:MM"),
    F("close_time", "string", "daily closing time, local, HH:MM (may be past midnight for nightlife, e.g. 02:00)"),
    F("visit_minutes", "int", "typical visit duration", "minutes", min=1),
    F("price_cny", "float", "typical spend per person", "CNY", min=0),
    F("tags", "string", "semicolon-separated descriptive tags", nullable=True),
), key=("poi_id",))
# The POI columns a model bundle carries for serving (all but the free-text tags), and those
# an itinerary request needs (a plan stays in one city, so not the city).
POI_BUNDLE_COLUMNS = tuple(c for c in POIS.columns if c != "tags")
POI_PLAN_COLUMNS = tuple(c for c in POI_BUNDLE_COLUMNS if c != "city")

VISITORS = Table("tourism", "visitors", "registered visitors (ticket, hotel, membership)", (
    F("visitor_id", "string", "tourism-internal visitor id"),
    F("phone", "string", "mobile number, E.164 digits", personal=True),
    F("age_band", "string", "age band", choices=AGE_BANDS, nullable=True),
    F("origin_city", "string", "home city stated at registration", nullable=True),
    F("consent_marketing", "bool", "consented to marketing and partner matching"),
    F("created_at", "timestamp", "registration time, local"),
), key=("visitor_id",))

VISITS = Table("tourism", "visits", "one visit of a visitor to a POI", (
    F("visit_id", "string", "visit identifier"),
    F("visitor_id", "string", "visitor (tourism.visitors)"),
    F("poi_id", "string", "POI visited (tourism.pois)"),
    F("arrived_at", "timestamp", "arrival, local"),
    F("departed_at", "timestamp", "departure, local; not before arrival"),
    F("spend_cny", "float", "money spent in this visit", "CNY", min=0),
    F("channel", "string", "how the visit was recorded", choices=CHANNELS),
), key=("visit_id",))

# ---------------------------------------------------------------- carrier (PSI hub)
SUBSCRIBERS = Table("carrier", "subscribers", "mobile subscribers", (
    F("phone", "string", "mobile number, E.164 digits", personal=True),
    F("home_city", "string", "home city inferred from night-time presence"),
    F("age_band", "string", "age band", choices=AGE_BANDS, nullable=True),
    F("gender", "string", "gender", choices=("F", "M"), nullable=True),
    F("arpu_tier", "int", "average revenue per user tier, 1 (low) to 5 (high)", min=1, max=5),
    F("consent_partner_share", "bool", "consented to privacy-preserving use with partners"),
), key=("phone",))

AREAS = Table("carrier", "areas", "cell areas (grid cells around towers) in the destination", (
    F("area_id", "string", "area identifier"),
    F("lat", "float", "area centre latitude", "degrees", min=-90, max=90),
    F("lon", "float", "area centre longitude", "degrees", min=-180, max=180),
), key=("area_id",))

PRESENCE = Table("carrier", "presence", "daily dwell of a subscriber in an area", (
    F("phone", "string", "mobile number, E.164 digits", personal=True),
    F("area_id", "string", "area (carrier.areas)"),
    F("date", "date", "local date"),
    F("dwell_minutes", "int", "minutes present in the area that day", "minutes", min=1, max=1440),
), key=("phone", "area_id", "date"))

# ---------------------------------------------------------------- internet platform
ACCOUNTS = Table("internet", "accounts", "platform accounts with a verified phone", (
    F("account_id", "string", "platform account id"),
    F("phone", "string", "mobile number, E.164 digits", personal=True),
    F("consent_ads", "bool", "consented to personalised advertising and partner matching"),
), key=("account_id",))

ENGAGEMENT = Table("internet", "engagement", "daily engagement of an account with a content topic", (
    F("account_id", "string", "account (internet.accounts)"),
    F("topic", "string", "content topic, e.g. 'museum', 'food', 'hiking'"),
    F("date", "date", "local date"),
    F("events", "int", "views, likes, shares and searches that day", min=1),
), key=("account_id", "topic", "date"))

# ---------------------------------------------------------------- truth (synthetic only)
TRUTH_PEOPLE = Table("truth", "people", "the hidden population every party is drawn from", (
    F("person_id", "string", "hidden person id"),
    F("phone", "string", "mobile number", personal=True),
    F("home_city", "string", "true home city"),
    F("home_distance_km", "float", "distance from home to the destination", "km"),
    F("taste", "string", "JSON list: affinity per POI category (latent taste)"),
    F("is_prospect", "bool", "no tourism history before the split, but visits in the test window"),
    F("campaign_response", "float", "true uplift in visit probability if targeted by a campaign", "probability"),
), key=("person_id",), kind="truth")

TRUTH_FUTURE = Table("truth", "future_visits", "visits in the test window (also in tourism.visits)", (
    F("person_id", "string", "hidden person id"),
    F("poi_id", "string", "POI"),
    F("arrived_at", "timestamp", "arrival, local"),
), kind="truth")

RAW_TABLES: tuple[Table, ...] = (POIS, VISITORS, VISITS, SUBSCRIBERS, AREAS, PRESENCE, ACCOUNTS, ENGAGEMENT)
TRUTH_TABLES: tuple[Table, ...] = (TRUTH_PEOPLE, TRUTH_FUTURE)

# ---------------------------------------------------------------- feature blocks (Spark output)
# Keyed by `token`: the pseudonymous user key agreed through PSI with the carrier hub; the same
# person has the same token in every party's blocks. Written as <out>/<party>/<name>.parquet.
TOKEN = F("token", "string", "pseudonymous user key from PSI (hex); same person, same token in every block")

USERS = Table("carrier", "users", "the user universe: consenting subscribers plus tourism-matched ones", (
    TOKEN,
    F("in_tourism", "bool", "matched with a tourism visitor"),
    F("in_internet", "bool", "matched with an internet account"),
    F("is_prospect", "bool", "no tourism interaction in the training window"),
), key=("token",), kind="block")

TOURISM_INTERACTIONS = Table("tourism", "interactions", "user × POI confidence in the training window", (
    TOKEN,
    F("poi_id", "string", "POI"),
    F("visits", "int", "visits in the window", min=1),
    F("spend_cny", "float", "total spend", "CNY", min=0),
    F("dwell_minutes", "float", "total time on site", "minutes", min=0),
    F("recency_days", "float", "days from the last visit to the end of the window", "days", min=0),
    F("confidence", "float", "ALS confidence weight c = 1 + α·f(visits, spend, dwell, recency)", min=0),
), key=("token", "poi_id"), kind="block")

TOURISM_TEST = Table("tourism", "test_interactions", "user × POI visits in the test window (held out)", (
    TOKEN,
    F("poi_id", "string", "POI"),
    F("visits", "int", "visits in the test window", min=1),
), key=("token", "poi_id"), kind="block")

POI_FEATURES = Table("tourism", "poi_features", "POI side features", (
    F("poi_id", "string", "POI"),
    F("category", "string", "category", choices=POI_CATEGORIES),
    F("popularity", "float", "distinct visitors in the training window"),
    F("summer_share", "float", "share of training visits in June–August"),
    F("weekend_share", "float", "share of training visits on Saturday or Sunday"),
), key=("poi_id",), kind="block")

CARRIER_INTERACTIONS = Table("carrier", "interactions", "user × area dwell in the training window", (
    TOKEN,
    F("area_id", "string", "area"),
    F("days", "int", "days present", min=1),
    F("dwell_minutes", "float", "total dwell", "minutes", min=0),
    F("confidence", "float", "ALS confidence weight", min=0),
), key=("token", "area_id"), kind="block")

CARRIER_USER_FEATURES = Table("carrier", "user_features", "carrier side features per user", (
    TOKEN,
    F("home_distance_km", "float", "home city to destination", "km"),
    F("trip_days", "float", "days seen in the destination in the training window"),
    F("age_band", "string", "age band", nullable=True, choices=AGE_BANDS),
    F("arpu_tier", "int", "ARPU tier", min=1, max=5),
), key=("token",), kind="block")

INTERNET_INTERACTIONS = Table("internet", "interactions", "user × topic engagement in the training window", (
    TOKEN,
    F("topic", "string", "topic"),
    F("events", "int", "events", min=1),
    F("confidence", "float", "ALS confidence weight", min=0),
), key=("token", "topic"), kind="block")

INTERNET_USER_FEATURES = Table("internet", "user_features", "internet side features per user", (
    TOKEN,
    F("active_days", "float", "days with any engagement in the training window"),
    F("total_events", "float", "events in the training window"),
    F("travel_share", "float", "share of events on travel topics"),
), key=("token",), kind="block")

BLOCK_TABLES: tuple[Table, ...] = (
    USERS, TOURISM_INTERACTIONS, TOURISM_TEST, POI_FEATURES, CARRIER_INTERACTIONS,
    CARRIER_USER_FEATURES, INTERNET_INTERACTIONS, INTERNET_USER_FEATURES,
)

# Item column of each party's interaction block (the ALS item axis of that party).
ITEM_COLUMN = {"tourism": "poi_id", "carrier": "area_id", "internet": "topic"}
INTERACTION_TABLE = {"tourism": TOURISM_INTERACTIONS, "carrier": CARRIER_INTERACTIONS, "internet": INTERNET_INTERACTIONS}

ALL_TABLES: tuple[Table, ...] = RAW_TABLES + TRUTH_TABLES + BLOCK_TABLES


def table(qualified: str) -> Table:
    """Look a table up by `party.name`."""
    for t in ALL_TABLES:
        if t.qualified == qualified:
            return t
    raise KeyError(f"no table {qualified!r}; known: {', '.join(t.qualified for t in ALL_TABLES)}")


def tables_of(party: str, kind: str = "raw") -> list[Table]:
    return [t for t in ALL_TABLES if t.party == party and t.kind == kind]


def personal_columns(tables: Iterable[Table] = ALL_TABLES) -> set[str]:
    return {f.name for t in tables for f in t.fields if f.personal}


def markdown() -> str:
    """The contracts as documentation (docs/contracts.md is generated from this)."""
    parts = [f"# Data contracts (schema version {SCHEMA_VERSION})", "",
             "Generated from `features/contracts.py` by `wenlv contracts`; do not edit by hand.", ""]
    for kind, title in (("raw", "Raw party tables"), ("truth", "Synthetic truth"), ("block", "Feature blocks")):
        parts += [f"## {title}", ""]
        parts += [t.markdown() + "\n" for t in ALL_TABLES if t.kind == kind]
    return "\n".join(parts)
