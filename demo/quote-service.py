#!/usr/bin/env python3
"""The local cluster's demo quote service (scripts/mbx-local starts it): answers each
POST /quote with a JSON quote for the item it was asked about, so that
`curl -d '{"item":"widget"}' http://127.0.0.1:8080/quote` shows a round trip through the
MessageBox: two-way receive -> solicit-response send port -> this service -> back.

Usage: quote-service.py PORT [ADDRESS]   (listens on ADDRESS:PORT, default 127.0.0.1;
Python 3 standard library only)
"""
import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Quote(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the http.server name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            item = str(json.loads(body or b"{}").get("item", "unknown"))
        except (ValueError, AttributeError):
            item = body.decode("utf-8", "replace").strip() or "unknown"
        cents = int(hashlib.sha256(item.encode()).hexdigest()[:6], 16) % 100000
        answer = json.dumps({"item": item, "price": cents / 100, "currency": "EUR"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, fmt, *args):
        sys.stderr.write("quote-service: " + (fmt % args) + "\n")


if __name__ == "__main__":
    address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ThreadingHTTPServer((address, int(sys.argv[1])), Quote).serve_forever()
