"""`wenlv train`, `wenlv evaluate`, `wenlv promote`, `wenlv rollback` (results as JSON on stdout)."""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.errors import WenlvError
from wenlv.features import contracts
from wenlv.privacy.tls import fingerprint, make_deployment
from wenlv.settings import get_settings
from wenlv.training import registry
from wenlv.training.evaluation import finite
from wenlv.training.flickr_eval import evaluate_city
from wenlv.training.party_api import TOWER_PARTIES
from wenlv.training.remote import load_party, parse_parties, serve

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the checkout's mlflow/ store)"


def _parties(text: str) -> tuple[str, ...] | dict[str, str]:
    """``tourism,carrier`` (in process) or ``tourism=https://…,carrier=https://…`` (party services)."""
    if "=" in text:
        return parse_parties(text)
    return tuple(p.strip() for p in text.split(",") if p.strip())


def register(sub) -> None:
    t = sub.add_parser("train", help="federated ALS + cold-start towers on feature blocks; log to MLflow, register, gate")
    t.add_argument("--features", type=Path, required=True, help="feature folder written by `wenlv features`")
    t.add_argument("--mode", choices=("federated", "central"), default="federated",
                   help="federated (masked sums; the production path) or central (pooled baseline, never champion)")
    t.add_argument("--parties", type=_parties, default=contracts.PARTIES,
                   help="comma list, must include tourism; or name=https://host:port for each party's own "
                        "`wenlv party serve` (federated ALS over mutual TLS, logged and registered; --features is "
                        "then the tourism party's own folder)")
    t.add_argument("--out", type=Path, default=None,
                   help="with remote parties: work folder of the run (bundle, model card, audit log)")
    t.add_argument("--factors", type=int, default=16, help="latent factors per user and POI")
    t.add_argument("--iterations", type=int, default=10, help="ALS iterations")
    t.add_argument("--regularization", type=float, default=1.0, help="ALS L2 regularisation")
    t.add_argument("--alpha", type=float, default=1.0, help="confidence scale: each party's block is alpha * weighting(block)")
    t.add_argument("--weighting", choices=("none", "log", "bm25", "tfidf"), default="none",
                   help="confidence weighting each party applies to its own block before the fit")
    t.add_argument("--tune", type=int, default=0, metavar="N",
                   help="search N trials (Optuna) over factors, regularisation, alpha, weighting, iterations and the "
                        "towers' settings through the run's own fit, on a validation window cut from the training "
                        "window; each trial is a nested MLflow run; the best trial's settings are trained and registered")
    t.add_argument("--tune-minutes", type=float, default=None, help="time budget of the search (stops after N trials or this)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the factor initialisation and splits")
    t.add_argument("--data", type=Path, default=None, help="raw data folder, for POI names/places/hours in the bundle")
    t.add_argument("--tower-epochs", type=int, default=30, help="training epochs of the cold-start towers")
    t.add_argument("--dp-noise", type=float, default=0.0, help="Gaussian noise multiplier on tower outputs (0: off)")
    t.add_argument("--dp-grad-noise", type=float, default=0.0,
                   help="Gaussian noise multiplier on the gradients the coordinator returns (protects its labels)")
    t.add_argument("--no-towers", action="store_true", help="skip the cold-start towers")
    t.add_argument("--no-shapley", action="store_true", help="skip the coalition retrains (data-source values)")
    t.add_argument("--no-promote", action="store_true", help="register the version but do not try the quality gate")
    t.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    t.set_defaults(func=_train)

    pa = sub.add_parser("party", help="one organisation's party service, and the deployment's certificates")
    pa_sub = pa.add_subparsers(dest="party_command", required=True, metavar="PARTY_COMMAND")
    ps = pa_sub.add_parser("serve", help="serve this party's side of federated training over mutual TLS")
    ps.add_argument("--party", choices=contracts.PARTIES, required=True, help="which organisation this process is")
    ps.add_argument("--data", type=Path, required=True,
                    help="this party's own feature folder (its block + the shared carrier/users token list); "
                         "with --raw, the feature run over the parties writes it")
    ps.add_argument("--raw", type=Path, default=None,
                    help="raw data folder holding <raw>/<party>/: serve this party's side of "
                         "`wenlv features --parties` too (its own Spark job)")
    ps.add_argument("--master", default=None, help="with --raw: Spark master URL of this party's job (default local[*])")
    ps.add_argument("--listen", required=True, help="HOST:PORT")
    ps.add_argument("--tls", type=Path, default=None, help="certificate folder (default: WENLV_PARTY_TLS)")
    ps.add_argument("--state", type=Path, default=None,
                    help="where this party keeps its item factors (default: <data>/.wenlv-party)")
    ps.set_defaults(func=_party)
    pc = pa_sub.add_parser("certs", help="make a per-deployment CA and every party's certificate")
    pc.add_argument("--out", type=Path, required=True, help="folder for the CA and one key and certificate per party")
    pc.add_argument("--names", type=_parties, default=contracts.PARTIES, help="comma list of the parties to certify")
    pc.add_argument("--host", action="append", help="name=host or name=IP to put in that certificate's SAN")
    pc.set_defaults(func=_party)

    e = sub.add_parser("evaluate", help="metrics of a registered version (default: champion) on a feature folder, "
                                        "logged as an MLflow run linked to the version")
    e.add_argument("--features", type=Path, required=True, help="feature blocks folder to evaluate on")
    e.add_argument("--version", type=int, default=None, help="registered model version (default: the champion)")
    e.add_argument("--k", type=int, default=10, help="cut-off of NDCG@k and recall@k")
    e.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    e.add_argument("--no-log", action="store_true",
                   help="print the metrics only; by default they are also an MLflow run linked to the version")
    e.set_defaults(func=_evaluate)

    fl = sub.add_parser("evaluate-flickr", help="ALS vs popularity on one city's real Flickr visits (temporal split)")
    fl.add_argument("--city", required=True, help="Toro, Osak, Glas, Edin or Melb")
    fl.add_argument("--source", type=Path, default=Path("../shared/data/flickr"), help="folder holding visits/ and pois/")
    fl.add_argument("--test-fraction", type=float, default=0.2, help="latest share of each visitor's visits held out")
    fl.add_argument("--trials", type=int, default=0,
                    help="Optuna trials over the central ALS fit (factors, regularisation, alpha, weighting, "
                         "iterations) on a validation window cut from the training window; 0: the fixed grid")
    fl.add_argument("--tracking-uri", default=None, help=TRACKING_HELP + "; the search's parent and trial runs go there")
    fl.set_defaults(func=_evaluate_flickr)

    p = sub.add_parser("promote", help="make a version champion if it passes the quality gate")
    p.add_argument("--version", type=int, required=True, help="registered model version to promote")
    p.add_argument("--tolerance", type=float, default=None, help="allowed NDCG@10 drop vs the champion (default: WENLV_GATE_TOLERANCE)")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.set_defaults(func=_promote)

    r = sub.add_parser("rollback", help="point champion back at the previous champion")
    r.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    r.set_defaults(func=_rollback)


def _train(args) -> int:
    if isinstance(args.parties, dict):
        return _train_remote(args)
    from wenlv.training.pipeline import TrainConfig, train  # lazy: CLI start-up (~0.13 s)

    config = TrainConfig(mode=args.mode, parties=args.parties, factors=args.factors, iterations=args.iterations,
                         regularization=args.regularization, seed=args.seed, tower_epochs=args.tower_epochs,
                         alpha=args.alpha, weighting=args.weighting, tune=args.tune, tune_minutes=args.tune_minutes,
                         tower_noise_multiplier=args.dp_noise, tower_grad_noise_multiplier=args.dp_grad_noise,
                         towers=not args.no_towers,
                         shapley=not args.no_shapley, promote=not args.no_promote)
    out = train(args.features, config, tracking_uri=args.tracking_uri, data_dir=args.data)
    print(json.dumps(_public(out), default=str))
    return 0


def _train_remote(args) -> int:
    """Federated ALS driven over the party services, logged to MLflow and registered
    (training.remote_pipeline): the coordinator keeps the user factors and the tourism POI
    factors, every party keeps its own item factors on its own disk."""
    from wenlv.training.pipeline import TrainConfig  # lazy: CLI start-up (~0.13 s)
    from wenlv.training.remote_pipeline import train_remote  # lazy: CLI start-up (the pipeline's modules)

    settings = get_settings()
    if args.tune:
        raise WenlvError("--tune searches through the in-process federated fit; with party services "
                         "(name=https://…) it is not supported yet: tune on the parties' folders in process first")
    config = TrainConfig(mode="federated", parties=tuple(args.parties), factors=args.factors,
                         iterations=args.iterations, regularization=args.regularization, seed=args.seed,
                         tower_epochs=args.tower_epochs, tower_noise_multiplier=args.dp_noise,
                         tower_grad_noise_multiplier=args.dp_grad_noise, towers=not args.no_towers,
                         shapley=False, promote=False)
    out = train_remote(args.features, args.parties, settings.party_tls_dir, config, timeout=settings.party_timeout_s,
                       retries=settings.party_retries, tracking_uri=args.tracking_uri, data_dir=args.data,
                       work_dir=args.out)
    print(json.dumps(_public(out), default=str))
    return 0


def _party(args) -> int:
    if args.party_command == "certs":
        hosts: dict[str, list[str]] = {}
        for item in args.host or ():
            name, _, host = item.partition("=")
            hosts.setdefault(name, []).append(host)
        written = make_deployment(args.out, args.names, hosts)
        print(json.dumps({"files": written, "sha256": {k: fingerprint(v) for k, v in written.items()}}))
        return 0
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise WenlvError(f"--listen wants HOST:PORT, got {args.listen!r}")
    features = None
    if args.raw is None:
        party = load_party(args.party, args.data, args.state)
    else:   # its feature folder is filled by a feature run first: the ALS side loads on first use
        from wenlv.spark_jobs.party_features import FeatureParty  # lazy: CLI start-up (pyspark, ~0.5 s)

        features = FeatureParty(args.party, args.raw, args.data, master=args.master)
        party = (args.party, lambda: load_party(args.party, args.data, args.state))
    towers = None
    if args.party in TOWER_PARTIES:   # its bottom tower: built from its folder on first use
        towers = (args.party, lambda: _tower_side(args.party, args.data, args.state))
    serve(party, host, int(port), args.tls or get_settings().party_tls_dir, features=features, towers=towers,
          ready=lambda: print(json.dumps({"party": args.party, "listening": args.listen,
                                          "features": features is not None}), flush=True))
    return 0


def _tower_side(party: str, data, state):
    """The party's bottom-tower side (training.remote_towers), loaded when first called."""
    from wenlv.training.remote_towers import load_tower_party  # lazy: torch only when towers are trained

    return load_tower_party(party, data, state)


def _public(out: dict) -> dict:
    return {**{k: v for k, v in out.items() if k != "metrics"}, "metrics": finite(out["metrics"])}


def _evaluate(args) -> int:
    from wenlv.training.pipeline import evaluate_version  # lazy: CLI start-up (~0.13 s)

    print(json.dumps(evaluate_version(args.features, args.version, args.tracking_uri, args.k, log=not args.no_log)))
    return 0


def _evaluate_flickr(args) -> int:
    from wenlv.training.tuning import TrialLog  # lazy: CLI start-up (optuna)

    trial_log = TrialLog(args.tracking_uri, name=f"tune-flickr-{args.city}") if args.trials else None
    print(json.dumps(evaluate_city(args.city, args.source, test_fraction=args.test_fraction, trials=args.trials,
                                   trial_log=trial_log), default=str))
    return 0


def _promote(args) -> int:
    kwargs = {} if args.tolerance is None else {"tolerance": args.tolerance}
    decision = registry.promote(args.version, args.tracking_uri, **kwargs)
    print(json.dumps({"version": args.version, **decision.as_dict(),
                      "champion_version": registry.champion_version(args.tracking_uri)}))
    return 0 if decision.passed else 1


def _rollback(args) -> int:
    print(json.dumps({"champion_version": registry.rollback(args.tracking_uri)}))
    return 0
