"""``python -m bot.emulator``: run the Slack emulator on its own until interrupted."""

from __future__ import annotations

import argparse
import json
import logging

from .scopes import manifest_scopes
from .server import EmulatorServer
from .socket_mode import APP_TOKEN
from .state import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--events-url", help="where the app takes Events API requests")
    parser.add_argument("--commands-url", help="slash commands (default: --events-url)")
    parser.add_argument("--interactivity-url", help="interactivity (default: --events-url)")
    parser.add_argument("--signing-secret", default="emulator-signing-secret")
    parser.add_argument("--bot-token", default="xoxb-emulator-token")
    parser.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="ID[:NAME]",
        help="create a channel the bot is in (repeatable)",
    )
    parser.add_argument(
        "--user", action="append", default=[], metavar="ID[:NAME]", help="create a person"
    )
    parser.add_argument(
        "--scopes", help="the bot token's scopes, comma-separated (default: the manifest's)"
    )
    parser.add_argument("--manifest", help="read the bot scopes from this app manifest")
    parser.add_argument(
        "--socket-mode",
        action="store_true",
        help="deliver over Socket Mode (the app calls apps.connections.open) instead of HTTP",
    )
    parser.add_argument(
        "--app-token", default=APP_TOKEN, help="the app-level token (xapp-…) Socket Mode accepts"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    scopes = args.scopes
    if scopes is None and args.manifest:
        scopes = manifest_scopes(args.manifest)
    workspace = Workspace(bot_token=args.bot_token, scopes=scopes)
    for spec in args.user:
        user_id, _, name = spec.partition(":")
        workspace.add_user(user_id, name or None)
    for spec in args.channel:
        channel_id, _, name = spec.partition(":")
        workspace.add_channel(channel_id, name or None)
    server = EmulatorServer(
        host=args.host,
        port=args.port,
        events_url=args.events_url,
        commands_url=args.commands_url,
        interactivity_url=args.interactivity_url,
        signing_secret=args.signing_secret,
        workspace=workspace,
        socket_mode=args.socket_mode,
    )
    server.socket.app_token = args.app_token
    print(json.dumps(server.controller.info()), flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        server.deliverer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
