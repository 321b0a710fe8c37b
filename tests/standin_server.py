"""A stand-in for ``bort serve`` in load-test tests: the same HTTP contract, no model.

``POST /classify`` with ``{"texts": [...]}`` answers ``{"results": [{"label", "score", "scores"}]}``
after a configurable delay; ``GET /readyz`` answers 200 once the server is up. Options let tests
make it misbehave (wrong labels, a crash at start) and spawn a child process, as BentoML does, so
tests can check that stopping by process group leaves nothing behind.

Run: ``python tests/standin_server.py --port 3901 --labels fresh,rotten``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(labels: list[str], delay_s: float, wrong_label: bool,
                 api_key: str = "") -> type[BaseHTTPRequestHandler]:
    """A request handler closed over the stand-in's behaviour."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

        def log_message(self, *args) -> None:  # no access log: it would dominate the test output
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"status": "ready"} if self.path == "/readyz" else {"error": "not found"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/classify":
                self._send(404, {"error": "not found"})
                return
            if api_key and self.headers.get("X-API-Key") != api_key:
                self._send(401, {"error": "missing or wrong X-API-Key"})
                return
            texts = json.loads(body)["texts"]
            time.sleep(delay_s)
            results = []
            for text in texts:
                label = "no-such-label" if wrong_label else labels[len(text) % len(labels)]
                scores = {name: (0.9 if name == label else 0.1) for name in labels}
                results.append({"label": label, "score": 0.9, "scores": scores})
            self._send(200, {"results": results})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--labels", default="fresh,rotten")
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--wrong-label", action="store_true", help="answer a label outside the set")
    parser.add_argument("--spawn-child", action="store_true", help="start a child that outlives a plain kill")
    parser.add_argument("--spawn-session-child", action="store_true",
                        help="start a child in a new session, as `bort serve` starts BentoML")
    parser.add_argument("--ignore-sigterm", action="store_true", help="only SIGKILL stops it")
    parser.add_argument("--api-key", default="", help="answer 401 unless X-API-Key is this")
    parser.add_argument("--fail-start", action="store_true", help="exit with an error before serving")
    args = parser.parse_args()
    if args.fail_start:
        print("stand-in: failing at start as asked", file=sys.stderr)
        sys.exit(3)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    if args.spawn_child:
        # Same process group as us (no new session): like BentoML's worker process.
        subprocess.Popen(sleeper)
    if args.spawn_session_child:
        subprocess.Popen(sleeper, start_new_session=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = make_handler(args.labels.split(","), args.delay_ms / 1000.0, args.wrong_label, args.api_key)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # clients hang up when Locust stops: fine
    server.serve_forever()


if __name__ == "__main__":
    main()
