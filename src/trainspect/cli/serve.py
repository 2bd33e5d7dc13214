"""``trainspect serve``: the live web dashboard over a runs folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="live web dashboard of the runs in a folder (local, offline)",
                       description="Serve a local dashboard of the runs in RUN_DIR (a runs folder or one run). "
                                   "It reads the runs' stores and updates while they train; only files of that "
                                   "folder are served.")
    p.add_argument("run_dir", nargs="?", default="runs", help="runs folder or one run folder (default: runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                        "runs to your network)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from trainspect.views.web.server import DashboardServer

    server = DashboardServer(args.run_dir, host=args.host, port=args.port)
    print(f"trainspect dashboard of {server.dashboard.root}: {server.url}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
