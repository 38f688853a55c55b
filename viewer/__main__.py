"""`python -m viewer [ROOT] [--port 8765] [--no-browser]`

Serves the run folders under ROOT (default runs/) on http://127.0.0.1:PORT/ for a browser on this machine: the runs
table, their training curves, one run's summary, config and plots. Nothing is written, nothing leaves the machine.
Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from pathlib import Path

from viewer.server import ViewerServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m viewer", description=__doc__.split("\n\n")[1])
    parser.add_argument("root", nargs="?", type=Path, default=Path("runs"),
                        help="a run folder, a multirun folder, or a folder holding them (default: runs)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.root.is_dir():
        print(f"[grokking-lab] error: {args.root} is not a folder (a run, multirun or runs folder)", file=sys.stderr)
        return 1
    try:
        server = ViewerServer(args.root, args.port)
    except OSError as err:
        print(f"[grokking-lab] error: cannot listen on 127.0.0.1:{args.port}: {err.strerror} (try --port 0)",
              file=sys.stderr)
        return 1
    print(f"[grokking-lab] viewing {server.root} at {server.url} (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\n[grokking-lab] viewer stopped", flush=True)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
