"""`wenlv features` across three organisations: each party's Spark job in its own service.

A :class:`FeatureParty` is one organisation's side of the feature run, inside its own
`wenlv party serve` process: its own Spark session, its own raw folder (``<raw>/<party>/``),
its own feature folder (``<out>/``, where its blocks, its PSI messages and the manifest go).
:func:`run_parties` is the coordinator and the one declaration of the run's steps (validate →
plan → PSI request/respond/finish → align → blocks → manifest): it calls the parties' steps
and carries each message from the party that made it to the one it is for. The in-process
run (spark_jobs.features_job) is the same coordinator over three local FeatureParty objects
that share one Spark session and one folder (``shared_folder``).

What crosses (the same messages as the in-process run's exchange folder, as arrays, never
identifiers): the public split plan and PSI session ids; blinded points (32 bytes each) and
re-blinded answers; the carrier's alignment maps (session token → user token, for rows the
receiver already matched); tourism's list of user tokens with history; the carrier's user
token list (the shared user axis of training); row counts and digests for the manifest.
Every message goes through the coordinator, so it sees what the in-process run's exchange
folder holds — docs/deployment.md says what that lets it learn.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from wenlv.features import contracts
from wenlv.privacy import psi
from wenlv.spark_jobs import psi_exchange
from wenlv.spark_jobs.carrier_job import INTERNET_SESSION, TOURISM_SESSION, CarrierJob
from wenlv.spark_jobs.internet_job import InternetJob
from wenlv.spark_jobs.party import PLAN_FILE
from wenlv.spark_jobs.session import get_spark
from wenlv.spark_jobs.tourism_job import TourismJob
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

STEPS = ("validate", "plan", "psi request", "psi respond", "psi finish", "align", "blocks", "manifest")  # run_parties'
JOBS = {"tourism": TourismJob, "carrier": CarrierJob, "internet": InternetJob}
SESSION_OF = {"tourism": TOURISM_SESSION, "internet": INTERNET_SESSION}  # the spokes' one session each
OTHER = {TOURISM_SESSION: "tourism", INTERNET_SESSION: "internet"}  # the carrier's partner per session
TOKEN_BYTES = 16          # a user token: 32 hex characters
SESSION_TOKEN_BYTES = 32  # a PSI session token: 64 hex characters
# the methods a coordinator may call (nothing else is reachable over the network)
FEATURE_METHODS = ("begin", "validate", "publish_plan", "receive_plan", "open_sessions", "receive_session", "psi_request",
           "psi_respond", "psi_finish", "align", "receive_alignment", "receive_history", "build_blocks",
           "receive_users", "finish")


# ------------------------------------------------------------------ messages as arrays
def _fixed(values, width: int) -> np.ndarray:
    """bytes values of one width → uint8 [n, width] (how points cross the wire)."""
    values = [bytes(v) for v in values]
    if any(len(v) != width for v in values):
        raise WenlvError(f"a message value is not {width} bytes")
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), width)


def _rows(array, width: int, what: str) -> list[bytes]:
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != width:
        raise psi.PsiError(f"{what}: expected uint8 rows of {width} bytes, got {a.dtype} {a.shape}")
    return [a[i].tobytes() for i in range(len(a))]


def _hex_rows(array, width: int, what: str) -> list[str]:
    return [r.hex() for r in _rows(array, width, what)]


def _binary_column(rows: list[bytes]) -> pa.Array:
    return pa.array(rows, type=pa.binary())


def _read_column(path: Path, column: str) -> list:
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


class FeatureParty:
    """One organisation's side of the feature run (in its own process; Spark started on `begin`)."""

    METHODS = FEATURE_METHODS

    def __init__(self, party: str, raw_dir: str | Path, out_dir: str | Path, master: str | None = None, spark=None,
                 shared_folder: bool = False):
        """`shared_folder`: the three parties write into one folder (the in-process run, whose folder is a
        fresh staging one): a message another party sends is already where this party reads it, so
        receiving writes nothing, and `begin` removes nothing (another party's output is not stale there)."""
        if party not in JOBS:
            raise WenlvError(f"unknown party {party!r}; known: {', '.join(JOBS)}")
        self.name, self.raw_dir, self.out_dir = party, Path(raw_dir), Path(out_dir)
        self.shared_folder = shared_folder
        self.master, self.spark, self.job, self.matched = master, spark, None, {}
        if not (self.raw_dir / party).is_dir():
            raise WenlvError(f"{self.raw_dir / party} is missing: the {party} service reads <raw>/{party}/")

    # -------------------------------------------------------------- run start
    def begin(self, quarantine: bool = False) -> dict:
        """A fresh run: this party's earlier outputs of a feature run go, nothing else of the folder."""
        self._release()
        if not self.shared_folder:
            self._remove_earlier_run()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.spark is None:
            self.spark = get_spark(self.master, app_name=f"wenlv-{self.name}")
        self.job = JOBS[self.name](self.spark, self.raw_dir, self.out_dir, quarantine)
        return {"party": self.name}

    def _remove_earlier_run(self) -> None:
        for folder in (self.out_dir / self.name, self.out_dir / "exchange", self.out_dir / "quarantine" / self.name):
            if folder.exists():
                shutil.rmtree(folder)
        if self.name != "carrier" and (self.out_dir / contracts.USERS.party).exists():
            shutil.rmtree(self.out_dir / contracts.USERS.party)   # the user axis the carrier sent last time
        (self.out_dir / "manifest.json").unlink(missing_ok=True)

    def _need_job(self):
        if self.job is None:
            raise WenlvError(f"the {self.name} feature run has not begun (call begin first)")
        return self.job

    def validate(self) -> dict:
        return self._need_job().validate()

    # -------------------------------------------------------------- plan and sessions
    def publish_plan(self, split_date: str | None = None) -> dict:
        self._only("tourism", "publish_plan")
        return self._need_job().publish_plan(date.fromisoformat(split_date) if split_date else None)

    def receive_plan(self, plan: dict) -> None:
        if set(plan) != {"split_date", "train_window", "test_window"}:
            raise WenlvError(f"a split plan has keys split_date, train_window, test_window; got {sorted(plan)}")
        exchange = self._need_job().exchange
        if self.shared_folder:
            return
        exchange.mkdir(parents=True, exist_ok=True)
        (exchange / PLAN_FILE).write_text(json.dumps(plan))

    def open_sessions(self) -> dict:
        self._only("carrier", "open_sessions")
        job = self._need_job()
        job.open_sessions()
        return {s: json.loads((psi_exchange.session_dir(job.exchange, s) / "session.json").read_text())
                for s in (TOURISM_SESSION, INTERNET_SESSION)}

    def receive_session(self, session: str, opened: dict) -> None:
        if session != SESSION_OF.get(self.name) or opened.get("session") != session:
            raise WenlvError(f"the {self.name} party takes no part in PSI session {session!r}")
        folder = psi_exchange.session_dir(self._need_job().exchange, session)
        if not self.shared_folder:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "session.json").write_text(json.dumps(opened))
        psi_exchange.read_session_id(self.job.exchange, session)  # the protocol must be ours

    # -------------------------------------------------------------- PSI
    def psi_request(self) -> dict:
        """Step 1 of this party's session(s): {session: its blinded points, uint8 [n, 32], point order}."""
        job = self._need_job()
        if self.name == "carrier":
            job.psi_request_sessions(run=at_once)
            sessions = (TOURISM_SESSION, INTERNET_SESSION)
        else:
            job.psi_request(SESSION_OF[self.name], job.psi_phones())
            sessions = (SESSION_OF[self.name],)
        return {s: _fixed(_read_column(psi_exchange.session_dir(job.exchange, s) / f"{self.name}.request.parquet",
                                       "point"), psi.POINT_BYTES) for s in sessions}

    def psi_respond(self, session: str, other: str, points) -> dict:
        """Step 2: the other's request re-blinded with our secret, as {point, reblinded}."""
        job = self._partner_check(session, other)
        folder = psi_exchange.session_dir(job.exchange, session)
        if not self.shared_folder:
            pq.write_table(pa.table({"point": _binary_column(_rows(points, psi.POINT_BYTES, "PSI request"))}),
                           folder / f"{other}.request.parquet")
        job.psi_respond(session, other)
        answer = pq.read_table(folder / f"{self.name}.response.parquet", columns=["point", "reblinded"])
        return {"point": _fixed(answer.column("point").to_pylist(), psi.POINT_BYTES),
                "reblinded": _fixed(answer.column("reblinded").to_pylist(), psi.POINT_BYTES)}

    def psi_finish(self, session: str, other: str, point, reblinded) -> dict:
        """Step 3: our matched phones (kept here, persisted); the set sizes."""
        job = self._partner_check(session, other)
        folder = psi_exchange.session_dir(job.exchange, session)
        if not self.shared_folder:
            pq.write_table(pa.table({"point": _binary_column(_rows(point, psi.POINT_BYTES, "PSI answer")),
                                     "reblinded": _binary_column(_rows(reblinded, psi.POINT_BYTES, "PSI answer"))}),
                           folder / f"{other}.response.parquet")
        self.matched[session] = job.psi_finish(session, other)
        state = job.psi[session]
        psi_exchange.release(state)
        return {"sent": state.sent, "matched": state.matched}

    def _partner_check(self, session: str, other: str):
        job = self._need_job()
        expected = OTHER.get(session) if self.name == "carrier" else ("carrier" if SESSION_OF.get(self.name) == session
                                                                      else None)
        if expected is None or other != expected:
            raise WenlvError(f"the {self.name} party has no PSI session {session!r} with {other!r}")
        return job

    # -------------------------------------------------------------- alignment and blocks
    def align(self) -> dict:
        """The carrier's maps for each spoke: {party: (session tokens [n, 32], user tokens [n, 16])}."""
        self._only("carrier", "align")
        job = self._need_job()
        job.align(self.matched[TOURISM_SESSION], self.matched[INTERNET_SESSION])
        out = {}
        for partner in ("tourism", "internet"):
            table = pq.read_table(job.message_path(partner), columns=["session_token", "token"])
            out[partner] = (_fixed([bytes.fromhex(t) for t in table.column("session_token").to_pylist()],
                                   SESSION_TOKEN_BYTES),
                            _fixed([bytes.fromhex(t) for t in table.column("token").to_pylist()], TOKEN_BYTES))
        return out

    def receive_alignment(self, session_tokens, tokens) -> None:
        job = self._need_job()
        if self.shared_folder:
            return
        frame = pa.table({"session_token": _hex_rows(session_tokens, SESSION_TOKEN_BYTES, "alignment"),
                          "token": _hex_rows(tokens, TOKEN_BYTES, "alignment")})
        if frame.num_rows and len(set(frame.column("session_token").to_pylist())) != frame.num_rows:
            raise WenlvError("alignment: a session token appears twice")
        job.message_path(self.name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame, job.message_path(self.name))

    def receive_history(self, tokens) -> None:
        """The carrier hears which user tokens have tourism history before the split."""
        self._only("carrier", "receive_history")
        path = self._need_job().message_path("tourism_history")
        if self.shared_folder:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"token": _hex_rows(tokens, TOKEN_BYTES, "tourism history")}), path)

    def build_blocks(self) -> dict:
        """This party's blocks; what the others need from them (tokens only) and the manifest entries."""
        job = self._need_job()
        if self.name == "carrier":
            tables = job.build_blocks()
            users = _read_column(job.block_dir / f"{contracts.USERS.name}.parquet", "token")
            return {"tables": tables, "unknown_home_cities": job.unknown_home_cities,
                    "users": _fixed([bytes.fromhex(t) for t in users], TOKEN_BYTES)}
        matched = self.matched[SESSION_OF[self.name]]
        tables = job.build_blocks(matched)
        if self.name == "tourism":
            history = _read_column(job.message_path("tourism_history"), "token")
            return {"tables": tables, "tokenised": job.tokenised_visitors,
                    "history": _fixed([bytes.fromhex(t) for t in history], TOKEN_BYTES)}
        return {"tables": tables, "tokenised": job.tokenised_accounts}

    def receive_users(self, tokens) -> None:
        """The shared user axis (the carrier's token list, no other column) for training."""
        if self.name == "carrier":
            raise WenlvError("the carrier holds the user list itself")
        if self.shared_folder:
            return   # the carrier's own users block is there (with more columns than the list)
        folder = self.out_dir / contracts.USERS.party
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"token": _hex_rows(tokens, TOKEN_BYTES, "user list")}),
                       folder / f"{contracts.USERS.name}.parquet")

    def finish(self, manifest: dict) -> None:
        """The run's manifest beside this party's blocks; the run's Spark state released."""
        if not self.shared_folder:
            (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self._release()

    # -------------------------------------------------------------- helpers
    def _only(self, party: str, step: str) -> None:
        if self.name != party:
            raise WenlvError(f"{step} is the {party} party's step, not the {self.name} party's")

    def _release(self) -> None:
        for df in self.matched.values():
            df.unpersist()
        self.matched = {}
        if self.job is not None:
            if getattr(self.job, "users", None) is not None:
                self.job.users.unpersist()
            for checked in self.job.checked.values():
                checked.release()
            self.job = None


def run_parties(parties: dict, out_dir: str | Path, quarantine: bool = False, split_date: date | None = None,
                progress: bool = True, stats: dict | None = None, desc: str = "features (parties)") -> dict:
    """The coordinator of a feature run over party handles ({name: FeatureParty or a remote one}).

    Writes `<out>/manifest.json` (over remote parties the coordinator holds no block) and returns
    the manifest. `stats`, if given, receives seconds per step (STEPS) and PSI set sizes (for the
    benchmark); `desc` names the run in the progress bar and the log.
    """
    missing = [p for p in contracts.PARTIES if p not in parties]
    if missing:
        raise WenlvError(f"a feature run needs all three parties; missing: {', '.join(missing)}")
    out_dir = Path(out_dir)
    t, c, i = parties["tourism"], parties["carrier"], parties["internet"]
    bar = tqdm(total=len(STEPS), desc=desc, unit="step", file=sys.stderr, disable=not progress)
    stats = {} if stats is None else stats
    seconds = stats.setdefault("seconds", {})

    def step(name, work):
        started = time.perf_counter()
        bar.set_postfix_str(name)
        log.info("%s: %s", desc, name)
        result = work()
        seconds[name] = round(time.perf_counter() - started, 3)
        bar.update()
        return result

    def all_at_once(method, *args):
        return dict(zip(parties, at_once(*[lambda p=p: getattr(parties[p], method)(*args) for p in parties])))

    all_at_once("begin", quarantine)
    quarantined = step("validate", lambda: {k: v for part in all_at_once("validate").values() for k, v in part.items()})

    def plan_step():
        plan = t.publish_plan(split_date.isoformat() if split_date else None)
        at_once(lambda: c.receive_plan(plan), lambda: i.receive_plan(plan))
        opened = c.open_sessions()
        at_once(lambda: t.receive_session(TOURISM_SESSION, opened[TOURISM_SESSION]),
                lambda: i.receive_session(INTERNET_SESSION, opened[INTERNET_SESSION]))
        return plan

    plan = step("plan", plan_step)
    requests = step("psi request", lambda: all_at_once("psi_request"))
    answers = step("psi respond", lambda: dict(zip(
        ("c->t", "c->i", "t->c", "i->c"),
        at_once(lambda: c.psi_respond(TOURISM_SESSION, "tourism", requests["tourism"][TOURISM_SESSION]),
                lambda: c.psi_respond(INTERNET_SESSION, "internet", requests["internet"][INTERNET_SESSION]),
                lambda: t.psi_respond(TOURISM_SESSION, "carrier", requests["carrier"][TOURISM_SESSION]),
                lambda: i.psi_respond(INTERNET_SESSION, "carrier", requests["carrier"][INTERNET_SESSION])))))
    sizes = step("psi finish", lambda: dict(zip(
        ("tourism", "internet", "carrier_t", "carrier_i"),
        at_once(lambda: t.psi_finish(TOURISM_SESSION, "carrier", answers["c->t"]["point"], answers["c->t"]["reblinded"]),
                lambda: i.psi_finish(INTERNET_SESSION, "carrier", answers["c->i"]["point"], answers["c->i"]["reblinded"]),
                lambda: c.psi_finish(TOURISM_SESSION, "tourism", answers["t->c"]["point"], answers["t->c"]["reblinded"]),
                lambda: c.psi_finish(INTERNET_SESSION, "internet", answers["i->c"]["point"],
                                     answers["i->c"]["reblinded"])))))
    psi_counts = {"tourism_carrier_matched": sizes["carrier_t"]["matched"],
                  "internet_carrier_matched": sizes["carrier_i"]["matched"]}
    stats["psi_set_sizes"] = {f"tourism@{TOURISM_SESSION}": sizes["tourism"]["sent"],
                              f"internet@{INTERNET_SESSION}": sizes["internet"]["sent"],
                              f"carrier@{TOURISM_SESSION}": sizes["carrier_t"]["sent"],
                              f"carrier@{INTERNET_SESSION}": sizes["carrier_i"]["sent"]}

    def align_step():
        maps = c.align()
        at_once(lambda: t.receive_alignment(*maps["tourism"]), lambda: i.receive_alignment(*maps["internet"]))

    step("align", align_step)

    def blocks_step():
        built_t, built_i = at_once(t.build_blocks, i.build_blocks)
        c.receive_history(built_t["history"])
        built_c = c.build_blocks()
        at_once(lambda: t.receive_users(built_c["users"]), lambda: i.receive_users(built_c["users"]))
        return built_t, built_i, built_c

    built_t, built_i, built_c = step("blocks", blocks_step)
    tables = {**built_t["tables"], **built_i["tables"], **built_c["tables"]}
    psi_counts.update({"users": tables["carrier/users"]["rows"], "tourism_visitors_tokenised": built_t["tokenised"],
                       "internet_accounts_tokenised": built_i["tokenised"]})

    def manifest_step():
        manifest = {
            "schema_version": contracts.SCHEMA_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "split_date": plan["split_date"], "train_window": plan["train_window"], "test_window": plan["test_window"],
            "tables": {key: tables[key] for key in sorted(tables)},
            "quarantine": quarantined,
            "psi": psi_counts,
            "unknown_home_cities": built_c["unknown_home_cities"],
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        all_at_once("finish", manifest)
        tmp.replace(out_dir / "manifest.json")
        return manifest

    manifest = step("manifest", manifest_step)
    bar.close()
    return manifest


def at_once(*calls):
    """Run independent steps of different parties (or sessions) at the same time, as they would
    run on the parties' own machines; their results in order, the first failure raised.

    In the in-process run they share one Spark application: each party's jobs fill the cores another
    party's leave idle (a job's last tasks, the driver's planning between jobs), which run one after
    another would waste. Every party still reads only its own folder and the exchange files.
    """
    with ThreadPoolExecutor(len(calls), thread_name_prefix="wenlv-psi") as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


class RemoteFeatureParty:
    """The coordinator's handle on one party's feature side (the methods of FeatureParty, over a PartyChannel)."""

    def __init__(self, channel):
        self.channel, self.name = channel, channel.name

    def __getattr__(self, method: str):
        if method not in FEATURE_METHODS:
            raise AttributeError(method)
        return lambda *args: self.channel.call(method, *args)

    def close(self) -> None:
        self.channel.close()
