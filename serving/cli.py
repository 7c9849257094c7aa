"""`wenlv serve`, `wenlv materialize`, `wenlv apikey create|list|rotate|revoke|end-sessions`."""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.errors import WenlvError
from wenlv.serving.auth import ROLES, KeyStore
from wenlv.serving.online_store import DEFAULT_PREFIX, open_store

KEYS_HELP = "API key database (default: $WENLV_API_KEYS, else ~/.wenlv/api_keys.sqlite)"
TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the checkout's mlflow/ store)"


def _store_args(p) -> None:
    p.add_argument("--redis-url", default=None, help="online store in Redis (default: $REDIS_URL, else SQLite)")
    p.add_argument("--sqlite", type=Path, default=None,
                   help="SQLite online store (default: $WENLV_ONLINE_SQLITE, else ~/.wenlv/online_store.sqlite)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix in the online store")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the recommendation API (follows the MLflow champion, or --bundle DIR)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--bundle", type=Path, default=None, help="serve this bundle directory instead of the champion")
    p.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    p.add_argument("--poll-s", type=float, default=10.0, help="how often to check the champion alias")
    p.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    p.add_argument("--no-user-index", action="store_true", help="skip the user (audience) index")
    _store_args(p)
    p.set_defaults(func=_serve)

    m = sub.add_parser("materialize", help="write a model version's online features (vectors, visits, side features)")
    m.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the MLflow champion)")
    m.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    m.add_argument("--features", type=Path, default=None, help="feature blocks folder (side features for cold start)")
    m.add_argument("--model-version", default=None, help="override the version label in the keys")
    m.add_argument("--ttl-days", type=float, default=30.0, help="days before the online features expire")
    _store_args(m)
    m.set_defaults(func=_materialize)

    k = sub.add_parser("apikey", help="manage API keys (stored hashed)")
    ksub = k.add_subparsers(dest="apikey_command", required=True)
    c = ksub.add_parser("create", help="create a key; prints it once")
    c.add_argument("--role", required=True, choices=ROLES, help="what the key may call")
    c.add_argument("--tenant", required=True, help="whose data the key sees (1-64 letters, digits, '-' or '_')")
    c.add_argument("--expires-days", type=float, default=None,
                   help="the key stops working after this many days (default: only when revoked)")
    c.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    c.set_defaults(func=_apikey_create)
    ls = ksub.add_parser("list", help="list keys (ids, roles, tenants; never the keys)")
    ls.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    ls.set_defaults(func=_apikey_list)
    rot = ksub.add_parser("rotate", help="a new key for the same role and tenant; the old one works for a grace period")
    rot.add_argument("key_id", help="the id of the key to replace (from `wenlv apikey list`)")
    rot.add_argument("--grace-minutes", type=float, default=60.0,
                     help="minutes the old key keeps working, so clients can switch (0: refused within a second)")
    rot.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    rot.set_defaults(func=_apikey_rotate)
    r = ksub.add_parser("revoke", help="revoke a key by its id (a running server refuses it within a second)")
    r.add_argument("key_id", help="the key's id (from `wenlv apikey list`)")
    r.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    r.set_defaults(func=_apikey_revoke)
    es = ksub.add_parser("end-sessions", help="log out every dashboard session of a key, keeping the key "
                                              "(a suspected stolen cookie); a running server refuses them within a second")
    es.add_argument("key_id", help="the key's id (from `wenlv apikey list`)")
    es.add_argument("--keys", type=Path, default=None, help=KEYS_HELP)
    es.set_defaults(func=_apikey_end_sessions)


def _serve(args) -> int:
    # lazy: CLI start-up (uvicorn, FastAPI, FAISS and torch load only for the command that needs them)
    import uvicorn

    from wenlv.serving.runtime import build_app, uvicorn_config

    app = build_app(bundle_dir=args.bundle, tracking_uri=args.tracking_uri, redis_url=args.redis_url,
                    sqlite_path=args.sqlite, prefix=args.prefix, keys_path=args.keys, poll_s=args.poll_s,
                    with_user_index=not args.no_user_index)
    uvicorn.Server(uvicorn_config(app, args.host, args.port)).run()
    return 0


def _materialize(args) -> int:
    # lazy: CLI start-up (MLflow, FAISS and the model stack load only for this command)
    from wenlv.serving.lifecycle import load_champion
    from wenlv.serving.materialize import materialize
    from wenlv.serving.runtime import load_bundle_dir

    bundle, version = load_bundle_dir(args.bundle) if args.bundle else load_champion(args.tracking_uri)
    store = open_store(args.redis_url, args.sqlite, args.prefix)
    result = materialize(bundle, args.model_version or version, store, args.features, ttl_s=int(args.ttl_days * 86400))
    print(json.dumps(result))
    return 0


def _apikey_create(args) -> int:
    lifetime = None if args.expires_days is None else args.expires_days * 86400
    key = KeyStore(args.keys).create(args.role, args.tenant, expires_in_s=lifetime)
    print(json.dumps({"key": key, "role": args.role, "tenant": args.tenant, "expires_days": args.expires_days,
                      "note": "shown once; only its hash is stored"}))
    return 0


def _apikey_list(args) -> int:
    print(json.dumps(KeyStore(args.keys).list()))
    return 0


def _apikey_rotate(args) -> int:
    from wenlv.serving.auth import KeyStore

    key, old_until = KeyStore(args.keys).rotate(args.key_id, args.grace_minutes * 60)
    print(json.dumps({"key": key, "replaces": args.key_id, "old_key_valid_until": round(old_until, 3),
                      "note": "shown once; only its hash is stored"}))
    return 0


def _apikey_revoke(args) -> int:
    if not KeyStore(args.keys).revoke(args.key_id):
        raise WenlvError(f"no API key with id {args.key_id!r}")
    print(json.dumps({"revoked": args.key_id}))
    return 0


def _apikey_end_sessions(args) -> int:
    print(json.dumps({"key_id": args.key_id, "sessions_ended": KeyStore(args.keys).end_sessions(args.key_id)}))
    return 0
