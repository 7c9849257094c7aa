"""`wenlv train`, `wenlv evaluate`, `wenlv promote`, `wenlv rollback` (results as JSON on stdout)."""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.features import contracts

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the checkout's mlflow/ store)"


def _parties(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def register(sub) -> None:
    t = sub.add_parser("train", help="federated ALS + cold-start towers on feature blocks; log to MLflow, register, gate")
    t.add_argument("--features", type=Path, required=True, help="feature folder written by `wenlv features`")
    t.add_argument("--mode", choices=("federated", "central"), default="federated",
                   help="federated (masked sums; the production path) or central (pooled baseline, never champion)")
    t.add_argument("--parties", type=_parties, default=contracts.PARTIES, help="comma list, must include tourism")
    t.add_argument("--factors", type=int, default=16, help="latent factors per user and POI")
    t.add_argument("--iterations", type=int, default=10, help="ALS iterations")
    t.add_argument("--regularization", type=float, default=1.0, help="ALS L2 regularisation")
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

    e = sub.add_parser("evaluate", help="metrics of a registered version (default: champion) on a feature folder")
    e.add_argument("--features", type=Path, required=True, help="feature blocks folder to evaluate on")
    e.add_argument("--version", type=int, default=None, help="registered model version (default: the champion)")
    e.add_argument("--k", type=int, default=10, help="cut-off of NDCG@k and recall@k")
    e.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    e.set_defaults(func=_evaluate)

    fl = sub.add_parser("evaluate-flickr", help="ALS vs popularity on one city's real Flickr visits (temporal split)")
    fl.add_argument("--city", required=True, help="Toro, Osak, Glas, Edin or Melb")
    fl.add_argument("--source", type=Path, default=Path("../shared/data/flickr"), help="folder holding visits/ and pois/")
    fl.add_argument("--test-fraction", type=float, default=0.2, help="latest share of each visitor's visits held out")
    fl.set_defaults(func=_evaluate_flickr)

    p = sub.add_parser("promote", help="make a version champion if it passes the quality gate")
    p.add_argument("--version", type=int, required=True, help="registered model version to promote")
    p.add_argument("--tolerance", type=float, default=None, help="allowed NDCG@10 drop vs the champion")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.set_defaults(func=_promote)

    r = sub.add_parser("rollback", help="point champion back at the previous champion")
    r.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    r.set_defaults(func=_rollback)


def _train(args) -> int:
    from wenlv.training.pipeline import TrainConfig, train

    config = TrainConfig(mode=args.mode, parties=args.parties, factors=args.factors, iterations=args.iterations,
                         regularization=args.regularization, seed=args.seed, tower_epochs=args.tower_epochs,
                         tower_noise_multiplier=args.dp_noise, tower_grad_noise_multiplier=args.dp_grad_noise,
                         towers=not args.no_towers,
                         shapley=not args.no_shapley, promote=not args.no_promote)
    out = train(args.features, config, tracking_uri=args.tracking_uri, data_dir=args.data)
    print(json.dumps(_public(out), default=str))
    return 0


def _public(out: dict) -> dict:
    from wenlv.training.evaluation import finite

    return {**{k: v for k, v in out.items() if k != "metrics"}, "metrics": finite(out["metrics"])}


def _evaluate(args) -> int:
    from wenlv.training.pipeline import evaluate_version

    print(json.dumps(evaluate_version(args.features, args.version, args.tracking_uri, args.k)))
    return 0


def _evaluate_flickr(args) -> int:
    from wenlv.training.flickr_eval import evaluate_city

    print(json.dumps(evaluate_city(args.city, args.source, test_fraction=args.test_fraction), default=str))
    return 0


def _promote(args) -> int:
    from wenlv.training import registry

    kwargs = {} if args.tolerance is None else {"tolerance": args.tolerance}
    decision = registry.promote(args.version, args.tracking_uri, **kwargs)
    print(json.dumps({"version": args.version, **decision.as_dict(),
                      "champion_version": registry.champion_version(args.tracking_uri)}))
    return 0 if decision.passed else 1


def _rollback(args) -> int:
    from wenlv.training import registry

    print(json.dumps({"champion_version": registry.rollback(args.tracking_uri)}))
    return 0
