"""`keel users`: make users and API keys for the gateway.

    keel users create alice              # standard tier
    keel users create mm --tier vip
    keel users create ops --admin        # may call the deposit/withdraw admin endpoints

Prints the user id, API key and secret once, as JSON; the secret is stored sealed
(gateway/vault.py) and cannot be shown again. Exit codes: 0 done, 1 failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json

from infra.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a user and its API key")
    create.add_argument("name")
    create.add_argument("--tier", choices=("standard", "vip"), default="standard")
    create.add_argument("--admin", action="store_true", help="may use the admin endpoints")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg

    from gateway.users import create_user
    from gateway.vault import Vault
    from infra.migrate import migrate
    from infra.postgres import connect

    try:
        migrate(settings.postgres_dsn)
        with connect(settings) as conn:
            user = create_user(conn, Vault.from_settings(settings), args.name, args.tier,
                               args.admin)
    except psycopg.errors.UniqueViolation:
        print(f"keel users: a user named {args.name!r} already exists")
        return 1
    except psycopg.Error as exc:
        print(f"keel users: database error: {exc.__class__.__name__}")
        return 1
    print(json.dumps({"userId": user.user_id, "name": user.name, "apiKey": user.api_key,
                      "secretKey": user.secret.reveal(), "tier": args.tier,
                      "admin": args.admin}))
    return 0
