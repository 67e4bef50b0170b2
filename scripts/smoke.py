#!/usr/bin/env python3
"""Smoke test of the README's run command, as a new user would try it.

Runs `bash scripts/dev.sh`, waits until it says every service is ready, creates a webhook
subscription to a local receiver, opens a /ws connection with the printed session cookie and a
Socket.IO /admin connection with the printed JWT, publishes one event with eventctl, sees it
arrive at all three (the webhook signed with the subscription's secret), then sends SIGINT and
checks that everything stopped cleanly.

Standard library only. Exit status 0 when every check passed.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, ".tools", "dev")
LOG = os.path.join(STATE, "smoke-dev.log")
PORTS = {"gateway-ws": 8080, "gateway-socketio": 8081, "webhook-dispatcher": 8082,
         "integrations-runner": 8083, "stat-aggregator": 8084}
READY_TIMEOUT = float(os.environ.get("SMOKE_READY_TIMEOUT", "900"))  # includes the build
STEP_TIMEOUT = 30.0

passed = []


class SmokeFailure(Exception):
    pass


def check(ok, what):
    if not ok:
        raise SmokeFailure(what)
    passed.append(what)
    print(f"ok {len(passed)} - {what}", flush=True)


def wait_for(pred, what, timeout=STEP_TIMEOUT, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise SmokeFailure(f"timed out after {timeout:.0f}s waiting for {what}")


def read_log():
    try:
        with open(LOG, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def credentials():
    creds = {}
    with open(os.path.join(STATE, "credentials.env"), encoding="utf-8") as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                creds[k] = v
    return creds


def api(method, url, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook endpoint: every POST goes into `self.received`."""

    def __init__(self):
        self.received = queue.Queue()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(min(length, 1 << 20))
                receiver.received.put((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


class WsClient:
    """A minimal RFC 6455 client: text frames, client-side masking, no extensions."""

    def __init__(self, port, path="/ws", cookie=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        cookie_header = f"Cookie: {cookie}\r\n" if cookie else ""
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{cookie_header}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SmokeFailure("/ws closed during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise SmokeFailure(f"/ws handshake answered {status!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SmokeFailure("/ws closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, obj):
        self.send_text(json.dumps(obj))

    def send_text(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def recv(self):
        """The next text message as JSON; answers pings, fails on close."""
        return json.loads(self.recv_text())

    def recv_text(self):
        """The next text message; answers pings, fails on close."""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x8:
                raise SmokeFailure(f"/ws closed: {payload[:2].hex()} {payload[2:]!r}")
            if opcode == 0x9:
                mask = os.urandom(4)
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask
                                  + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_until(self, pred, what):
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            msg = self.recv()
            if pred(msg):
                return msg
        raise SmokeFailure(f"/ws: no {what}")


class AdminSocket:
    """Socket.IO v5 over Engine.IO v4 on a WebSocket, namespace /admin: just enough to
    connect with a JWT, emit, and read events."""

    NSP = "/admin"

    def __init__(self, port, token):
        self.ws = WsClient(port, "/socket.io/?EIO=4&transport=websocket")
        opened = self.ws.recv_text()
        if not opened.startswith("0"):
            raise SmokeFailure(f"Engine.IO open packet expected, got {opened[:80]!r}")
        self.ws.send_text(f"40{self.NSP}," + json.dumps({"token": token}))
        reply = self.next_packet()  # Socket.IO CONNECT (0) on success, CONNECT_ERROR (4) not
        if not reply.startswith(f"0{self.NSP},"):
            raise SmokeFailure(f"/admin connect refused: {reply[:200]!r}")

    def next_packet(self):
        """The next Socket.IO packet, without its Engine.IO message type (4); Engine.IO pings
        are answered on the way."""
        while True:
            packet = self.ws.recv_text()
            if packet == "2":
                self.ws.send_text("3")
                continue
            if not packet.startswith("4"):
                continue
            return packet[1:]

    def emit(self, event, data):
        self.ws.send_text(f"42{self.NSP}," + json.dumps([event, data]))

    def recv_event(self, name):
        deadline = time.monotonic() + STEP_TIMEOUT
        prefix = f"2{self.NSP},"
        while time.monotonic() < deadline:
            packet = self.next_packet()
            if packet.startswith(prefix):
                event, *args = json.loads(packet[len(prefix):])
                if event == name:
                    return args
        raise SmokeFailure(f"/admin: no {name} event")


def verify_standard_webhook(secret, headers, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.split(",", 1)[-1], expected)
               for sig in headers["webhook-signature"].split())


def target_dir():
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(meta)["target_directory"]


def smoke(dev):
    wait_for(lambda: "ready: all five services" in read_log() or dev.poll() is not None,
             "dev.sh to say ready", timeout=READY_TIMEOUT, interval=0.5)
    check(dev.poll() is None and "ready: all five services" in read_log(),
          "dev.sh says ready and keeps running")
    for name, port in PORTS.items():
        status = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
        check(status == 200, f"{name} /readyz is 200")

    creds = credentials()
    cookie = next(line.split(":", 1)[1].strip() for line in read_log().splitlines()
                  if line.strip().startswith("/ws session cookie:"))

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    status, sub = api("POST", "http://127.0.0.1:8082/crm/webhook-subscriptions",
                       creds["DEV_WEBHOOK_API_KEY"],
                       {"url": f"http://localhost:{receiver.server_port}/hook",
                        "event_types": ["order.*"]})
    check(status == 201 and sub["secret"].startswith("whsec_"),
          "webhook subscription created with the printed API key")

    ws = WsClient(PORTS["gateway-ws"], cookie=cookie)
    hello = ws.recv()
    check(hello.get("type") == "connected", "/ws accepts the printed session cookie")
    ws.send({"type": "subscribe", "channel": "order_changes"})
    ws.recv_until(lambda m: m.get("type") == "subscribed", "subscribe ack")

    admin_jwt = next(line.split(":", 1)[1].strip() for line in read_log().splitlines()
                     if line.strip().startswith("/admin JWT"))
    admin = AdminSocket(PORTS["gateway-socketio"], admin_jwt)
    admin.emit("subscribe", {"entities": {"orders": [101]}})
    (result,) = admin.recv_event("subscribe:result")
    check("entity:orders:101" in result.get("subscribed", []),
          "/admin accepts the printed JWT and subscribes to order 101")

    env = dict(os.environ, NATS_URL="nats://127.0.0.1:14222")
    publish = subprocess.run(
        [os.path.join(target_dir(), "debug", "eventctl"), "publish", "order.status_changed",
         "--entity", "101", "--data", '{"id": 101, "status": "paid"}',
         "--changed-fields", '{"status": "paid"}'],
        env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    check(publish.returncode == 0, "eventctl publish succeeds"
          + (f" ({publish.stderr.strip()[:200]})" if publish.returncode else ""))
    event_id = json.loads(publish.stdout)["id"]

    msg = ws.recv_until(lambda m: m.get("event") == "order:updated", "order:updated event")
    check(msg["data"].get("status") == "paid", "/ws client receives order:updated")

    (update,) = admin.recv_event("orders_updated")
    check(update.get("id") == event_id, "/admin socket receives orders_updated")

    headers, body = receiver.received.get(timeout=STEP_TIMEOUT)
    headers = {k.lower(): v for k, v in headers.items()}
    check(headers.get("webhook-id") == event_id and json.loads(body)["id"] == event_id,
          "webhook receiver gets the event")
    check(verify_standard_webhook(sub["secret"], headers, body),
          "webhook signature verifies with the subscription's secret")
    receiver.shutdown()

    os.kill(dev.pid, signal.SIGINT)
    try:
        rc = dev.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise SmokeFailure("dev.sh did not stop within 60 s of SIGINT")
    check(rc == 0 and "stopped cleanly." in read_log(),
          f"SIGINT stops dev.sh cleanly (exit {rc})")
    still = [name for name, port in PORTS.items() if port_open(port)]
    check(not still and not port_open(14222), f"every service and NATS stopped ({still})")


def main():
    os.makedirs(STATE, exist_ok=True)
    busy = [p for p in [*PORTS.values(), 14222] if port_open(p)]
    if busy:
        print(f"smoke: ports already in use: {busy}", file=sys.stderr)
        return 1
    with open(LOG, "w") as log:
        dev = subprocess.Popen(
            ["bash", "scripts/dev.sh"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            # A background job of a non-interactive shell starts with SIGINT ignored, and bash
            # cannot trap a signal ignored on entry: give dev.sh the default, as a terminal does.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        smoke(dev)
    except (SmokeFailure, OSError, KeyError, ValueError, queue.Empty) as err:
        print(f"not ok - {type(err).__name__}: {err}", flush=True)
        print("---- dev.sh output (tail) ----\n" + "\n".join(read_log().splitlines()[-40:]))
        for name in PORTS:
            path = os.path.join(STATE, "logs", f"{name}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    print(f"---- {name}.log (tail) ----\n" + "".join(f.readlines()[-5:]))
        print(f"smoke: {len(passed)} passed, 1 failed")
        return 1
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
    print(f"smoke: {len(passed)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
