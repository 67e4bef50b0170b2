#!/usr/bin/env python3
"""Development credentials for scripts/dev.sh, with nothing but the standard library.

  devcreds.py init FILE              create FILE (mode 600) with random secrets, unless it exists
  devcreds.py jwt SECRET [SUB] [TTL] an HS256 JWT for /admin and the webhook API (TTL in seconds)
  devcreds.py cookie SECRET SID      the express-session cookie value `s:<sid>.<signature>`,
                                     URL-encoded as browsers send it

The secrets are for a developer's machine only: they are generated here, kept in
.tools/dev/ (git-ignored) and never shipped.
"""
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.parse

# The names dev.sh reads; each gets a fresh random value once.
SECRET_NAMES = (
    "DEV_WEBHOOK_API_KEY",
    "DEV_ADMIN_JWT_SECRET",
    "DEV_WIDGET_API_KEY",
    "DEV_SESSION_SECRET",
    "DEV_INTEGRATIONS_API_KEY",
    # base64 of 32 random bytes: integrations-runner's AES-256-GCM credentials key.
    "DEV_INTEGRATIONS_CRYPTO_KEY",
)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def init(path: str) -> None:
    """Writes every missing credential; an existing file keeps its values (a newer version of
    this script may add names, which are appended)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    present = set()
    if os.path.exists(path):
        with open(path) as f:
            present = {line.split("=", 1)[0] for line in f if "=" in line}
    missing = [name for name in SECRET_NAMES if name not in present]
    if not missing:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        if not present:
            f.write("# Development-only credentials made by scripts/devcreds.py; never use them elsewhere.\n")
        for name in missing:
            if name.endswith("_CRYPTO_KEY"):
                value = base64.b64encode(secrets.token_bytes(32)).decode()
            else:
                value = secrets.token_hex(32)
            f.write(f"{name}={value}\n")


def jwt(secret: str, sub: str = "dev-admin", ttl: int = 30 * 24 * 3600) -> str:
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": sub, "iat": now, "exp": now + ttl, "role": "admin"}
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


def cookie(secret: str, sid: str) -> str:
    # express-session / cookie-signature: base64 (no padding) of HMAC-SHA256(secret, sid).
    sig = base64.b64encode(hmac.new(secret.encode(), sid.encode(), hashlib.sha256).digest())
    return urllib.parse.quote("s:" + sid + "." + sig.rstrip(b"=").decode(), safe="")


def main(argv: list) -> int:
    if len(argv) >= 2 and argv[0] == "init":
        init(argv[1])
    elif len(argv) >= 2 and argv[0] == "jwt":
        print(jwt(argv[1], *(argv[2:3]), *(int(t) for t in argv[3:4])))
    elif len(argv) == 3 and argv[0] == "cookie":
        print(cookie(argv[1], argv[2]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
