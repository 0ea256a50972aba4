"""The lab's "internet" host: tells each TCP client which source address it saw.

It runs in its own network namespace on the public bridge; the nat probe
connects from a compute node and expects SMS-services' public address back.
"""

from __future__ import annotations

import argparse
import signal
import socketserver
import sys


class WhoAmI(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(f"{self.client_address[0]}\n".encode())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((args.bind, args.port), WhoAmI)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"publichost: listening on {args.bind}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
