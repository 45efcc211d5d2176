"""The `eco2` command.

eco2 up [--data-dir D]      start the data plane and every service on 127.0.0.1
eco2 serve NAME             run one service in the foreground (as the Helm chart does)
eco2 migrate [NAME...]      apply the schema migrations of these services (default: all)
eco2 endpoints [--data-dir] print the endpoints of the stack running on a data dir
eco2 status [--data-dir]    each service's health, open streams and job queue, one table
eco2 identity [--name N]    print a dev user's wristband (x-eco2-identity) for grpcurl
eco2 chat "질문"            ask the assistant of the running stack
eco2 scan PHOTO [--hint T]  scan a photo with the running stack
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path


def loop_factory(settings):
    """The event loop `eco2 serve` runs on: `ECO2_EVENT_LOOP=uvloop` picks uvloop (a libuv loop
    in C: less CPU per task switch and socket read), asyncio's own loop otherwise."""
    if getattr(settings, "event_loop", "asyncio") != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        logging.getLogger("eco2").warning("ECO2_EVENT_LOOP=uvloop but uvloop is not installed: running on asyncio")
        return None
    return uvloop.new_event_loop


def _serve(args: argparse.Namespace) -> int:
    """Exit 0 after a clean stop, 2 when a setting is missing or invalid (one line naming the
    environment variable), 130 on a second Ctrl-C."""
    from .registry import create
    from .runtime.server import run
    from .runtime.settings import SettingsError

    try:
        app = create(args.name)
        serve = getattr(app, "serve", None)  # HTTP apps (the gateway) run their own server
        with asyncio.Runner(loop_factory=loop_factory(app.settings)) as runner:
            runner.run(serve() if serve else run(app, app.settings))
    except SettingsError as exc:  # at start-up: before SERVING, so nothing was served
        print(f"eco2 serve {args.name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # second Ctrl-C while shutting down
        return 130
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Apply each named service's pending migrations (idempotent: the runner records what it
    applied), print {service: [files applied]} as JSON. What the Helm hook Job runs before the
    pods of a release start, so they can skip migrating (ECO2_MIGRATE_ON_START=false)."""
    from .dataplane.migrations import MigrationError
    from .registry import MIGRATIONS, create

    names = args.names or list(MIGRATIONS)
    if unknown := [n for n in names if n not in MIGRATIONS]:
        print(
            f"eco2 migrate: no migrations for {', '.join(unknown)}; services with migrations: {', '.join(MIGRATIONS)}",
            file=sys.stderr,
        )
        return 2
    apps = [create(name) for name in names]
    if not all(app.settings.database_url for app in apps):
        print("eco2 migrate: set DATABASE_URL", file=sys.stderr)
        return 2

    async def run_all() -> dict[str, list[str]]:
        return {app.name: await app.migrate() for app in apps}

    try:
        applied = asyncio.run(run_all())
    except MigrationError as exc:
        print(f"eco2 migrate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(applied))
    return 0


def _up(args: argparse.Namespace) -> int:
    from .up import up

    return up(Path(args.data_dir) if args.data_dir else None)


def _endpoints(args: argparse.Namespace) -> int:
    from .runtime.endpoints import read_endpoints

    try:
        endpoints = read_endpoints(Path(args.data_dir) if args.data_dir else None)
    except FileNotFoundError as exc:
        print(f"eco2: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(endpoints, indent=2))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .runtime.endpoints import read_endpoints
    from .status import render, status

    try:
        endpoints = read_endpoints(Path(args.data_dir) if args.data_dir else None)
    except FileNotFoundError as exc:
        print(f"eco2: {exc}", file=sys.stderr)
        return 1
    rows = status(endpoints)
    print(render(rows))
    return 0 if all(r.serving for r in rows) else 1


def _identity(args: argparse.Namespace) -> int:
    from .runtime.dev_identity import NoIdentity, dev_wristband
    from .runtime.endpoints import read_endpoints

    try:
        auth = read_endpoints(Path(args.data_dir) if args.data_dir else None)["auth"]
        print(asyncio.run(dev_wristband(auth, args.name)))
    except (FileNotFoundError, KeyError, NoIdentity) as exc:
        print(f"eco2: {exc}", file=sys.stderr)
        return 1
    return 0


def _location_import(args: argparse.Namespace) -> int:
    from .location.importer import main as import_main

    return import_main(args)


def _chat_cmd(args: argparse.Namespace) -> int:
    from .chat.cli import main as chat_main

    return chat_main(args.data_dir, args.question, args.near)


def _scan_cmd(args: argparse.Namespace) -> int:
    from .scan.cli import main as scan_main

    return scan_main(args.data_dir, args.photo, args.hint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eco2", description="Eco² mesh: the recycling assistant as gRPC services")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the embedded data plane and every service")
    p_up.add_argument(
        "--data-dir", help="data directory (default: ECO2_DATA_DIR, /var/lib/eco2 as root, else ~/.local/share/eco2)"
    )
    p_up.set_defaults(func=_up)
    p_serve = sub.add_parser("serve", help="run one service in the foreground")
    p_serve.add_argument("name", help="auth, character, location, images, chat, scan, events or gateway")
    p_serve.set_defaults(func=_serve)
    p_mig = sub.add_parser(
        "migrate", help="apply the schema migrations of services (idempotent; the Helm chart's hook Job runs it)"
    )
    p_mig.add_argument(
        "names", nargs="*", metavar="NAME", help="services to migrate (default: every service with migrations)"
    )
    p_mig.set_defaults(func=_migrate)
    p_ep = sub.add_parser("endpoints", help="print the endpoints of a running stack")
    p_ep.add_argument("--data-dir")
    p_ep.set_defaults(func=_endpoints)
    p_st = sub.add_parser(
        "status",
        help="each service's health, open streams and job queue of a running stack (exit 1 when one is not serving)",
    )
    p_st.add_argument("--data-dir")
    p_st.set_defaults(func=_status)
    p_id = sub.add_parser(
        "identity",
        help='print a dev user\'s wristband for calling services directly (embedded only), e.g. grpcurl -H "x-eco2-identity: $(eco2 identity)"',
    )
    p_id.add_argument("--data-dir")
    p_id.add_argument("--name", default="grpcurl-dev", help="display name of the dev user (default: grpcurl-dev)")
    p_id.set_defaults(func=_identity)
    p_loc = sub.add_parser("location", help="location data tools")
    loc_sub = p_loc.add_subparsers(dest="location_command", required=True)
    p_imp = loc_sub.add_parser(
        "import", help="import the national recycling-centre standard data CSV (idempotent upserts)"
    )
    p_imp.add_argument("file", help="the CSV file (UTF-8 or CP949)")
    p_imp.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    p_imp.set_defaults(func=_location_import)
    p_chat = sub.add_parser("chat", help="ask the assistant of a running stack; streams the answer")
    p_chat.add_argument("--data-dir")
    p_chat.add_argument(
        "--near", metavar="LAT,LNG", help="share a location, e.g. 37.5665,126.9780 (for nearby collection points)"
    )
    p_chat.add_argument("question")
    p_chat.set_defaults(func=_chat_cmd)
    p_scan = sub.add_parser(
        "scan", help="scan a photo with a running stack: stages, the disposal answer and the character earned"
    )
    p_scan.add_argument("--data-dir")
    p_scan.add_argument(
        "--hint",
        default="",
        help='what the item is, e.g. "투명 생수병" (offline, the photo is not looked at: the hint classifies it)',
    )
    p_scan.add_argument("photo", help="a PNG, JPEG, GIF or WebP file")
    p_scan.set_defaults(func=_scan_cmd)
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `eco2` alone: what it can do, not an argparse complaint
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
