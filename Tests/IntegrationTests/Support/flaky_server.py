#!/usr/bin/env python3
"""A small real HTTP server for retry tests: answers the first FAILURES requests with 503, then serves GET from
ROOT and stores PUT bodies under ROOT (as WebDAV PUT does). With DOWN_AFTER, after that many stored PUTs it answers
every request with 503 (as a server that went down) until the file ROOT/../up exists. Listens on 127.0.0.1 on a
free port, which it writes to ROOT/../port; every request is logged to ROOT/../requests.log as "METHOD PATH STATUS",
and to ROOT/../auth.log as "METHOD PATH AUTHORIZATION" (the Authorization header it received, or "-"), so a test can
prove which credential reached which server. With the environment variable REDIRECT_TO set, every request is answered
307 with Location: REDIRECT_TO + path (a server sending the client elsewhere).

    flaky_server.py ROOT FAILURES [DOWN_AFTER]
"""
import http.server
import os
import sys
import threading

root = os.path.abspath(sys.argv[1])
state = {"failures": int(sys.argv[2]), "stored": 0,
         "down_after": int(sys.argv[3]) if len(sys.argv) > 3 else None}
up_marker = os.path.join(os.path.dirname(root), "up")
lock = threading.Lock()
log_path = os.path.join(os.path.dirname(root), "requests.log")
auth_path = os.path.join(os.path.dirname(root), "auth.log")
redirect_to = os.environ.get("REDIRECT_TO")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, status):
        with lock, open(log_path, "a") as f:
            f.write(f"{self.command} {self.path} {status}\n")

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.record(status)

    def fail_first(self):
        with lock, open(auth_path, "a") as f:
            f.write(f"{self.command} {self.path} {self.headers.get('Authorization') or '-'}\n")
        if redirect_to:
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:
                length -= len(self.rfile.read(min(length, 1 << 16)))
            self.send_response(307)
            self.send_header("Location", redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.record(307)
            return True
        with lock:
            down = state["down_after"] is not None and state["stored"] >= state["down_after"] \
                and not os.path.exists(up_marker)
            if state["failures"] > 0:
                state["failures"] -= 1
                fail = True
            else:
                fail = down
        if fail:
            # Read (and drop) a request body, so the client sees the answer and not a reset.
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:
                length -= len(self.rfile.read(min(length, 1 << 16)))
            self.answer(503, b"busy, try again later\n")
        return fail

    def target(self):
        path = os.path.normpath(os.path.join(root, self.path.lstrip("/")))
        return path if path.startswith(root + os.sep) else None

    def do_GET(self):
        if self.fail_first():
            return
        path = self.target()
        if not path or not os.path.isfile(path):
            return self.answer(404, b"not found\n")
        with open(path, "rb") as f:
            self.answer(200, f.read())

    def do_PUT(self):
        if self.fail_first():
            return
        path = self.target()
        if not path:
            return self.answer(403, b"outside the root\n")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        length = int(self.headers.get("Content-Length") or 0)
        with open(path + ".tmp", "wb") as f:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                f.write(chunk)
                length -= len(chunk)
        os.replace(path + ".tmp", path)
        with lock:
            state["stored"] += 1
        self.answer(201, b"created\n")


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(os.path.join(os.path.dirname(root), "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.replace(os.path.join(os.path.dirname(root), "port.tmp"), os.path.join(os.path.dirname(root), "port"))
server.serve_forever()
