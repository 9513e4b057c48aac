#!/usr/bin/env python3
"""Checks of the chart's rendered manifests, for scripts/deploy/check.sh (needs PyYAML).

  check_rendered.py split RENDERED OUTDIR   writes OUTDIR/k8s.yaml (built-in kinds, for
                                            kubernetes-validate) and OUTDIR/servicemonitors.json
  check_rendered.py assert SCENARIO RENDERED
                                            what the deployment must say, for the scenario (default,
                                            or a values file's name under ci/ without .yaml)
  check_rendered.py args RENDERED PLANS_DIR PORT GRPC_PORT
                                            the server container's args, NUL-separated, to run here:
                                            /models/ -> PLANS_DIR/, --host 127.0.0.1, --port PORT,
                                            --grpc-port GRPC_PORT
"""
import json
import re
import sys

import yaml

# What each scenario's values must produce (the release is named "r").
EXPECT = {
    "default": {
        "kinds": {"Deployment", "Service"},
        "port": 8000,
        "grpc": (8001, 8001),
        "flags": {"--threads": "2", "--shutdown-timeout-s": "30"},
        "absent": ["--truncate", "--max-batch-tokens", "--plan", "--max-connections",
                   "--header-timeout-s", "--body-timeout-s", "--keep-alive-timeout-s",
                   "--model-control-mode", "--model-repository", "--cors-allow-origin",
                   "--json-logs", "--otlp-endpoint"],
        "plans": [],
        "models": None,
        "api_key": None,
        "replicas": 1,
        "grace": 50,
        "pre_stop": "5",
    },
    "pvc-values": {
        "kinds": {"Deployment", "Service", "Secret", "HorizontalPodAutoscaler",
                  "PodDisruptionBudget", "ServiceMonitor"},
        "port": 9000,
        "grpc": (9001, 443),
        "flags": {"--max-batch-tokens": "16384", "--max-batch-size": "64",
                  "--max-queue-delay-us": "0", "--max-concurrent-requests": "512",
                  "--max-client-batch-size": "32", "--max-input-length": "64",
                  "--payload-limit": "10485760", "--threads": "3",
                  "--tokenization-workers": "2", "--shutdown-timeout-s": "45",
                  "--max-connections": "2048", "--header-timeout-s": "5",
                  "--body-timeout-s": "12.5", "--keep-alive-timeout-s": "90",
                  "--model-control-mode": "explicit", "--model-repository": "/models",
                  "--otlp-endpoint": "http://otel-collector.observability:4318",
                  "--cors-allow-origin": "https://app.example.com,https://admin.example.com"},
        "absent": [],
        "truncate": True,
        "json_logs": True,
        "plans": ["sentiment=/models/sst2.plan",
                  "minilm=/models/embeddings/all-MiniLM-L6-v2.plan"],
        "models": "pvc",
        "api_key": ("r-bertkit-api-key", "api-key"),
        "replicas": None,
        "grace": 65,
        "pre_stop": "5",
    },
    "init-values": {
        "kinds": {"Deployment", "Service", "ServiceMonitor", "ServiceAccount"},
        "port": 8000,
        "grpc": None,
        "flags": {"--max-batch-tokens": "8192", "--threads": "1", "--shutdown-timeout-s": "20"},
        "absent": ["--truncate", "--plan"],
        "plans": [],
        "models": "init",
        "api_key": ("bertkit-api", "token"),
        "replicas": 1,
        "grace": 60,
        "pre_stop": None,
    },
}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, outdir):
    docs = load(rendered)
    builtin = [d for d in docs if "." not in d["apiVersion"].split("/")[0] or
               d["apiVersion"].split("/")[0].endswith(".k8s.io")]
    crds = [d for d in docs if d not in builtin]
    other = [d for d in crds if d["kind"] != "ServiceMonitor"]
    if other:
        sys.exit(f"{rendered}: no validator for {[d['kind'] for d in other]}")
    with open(f"{outdir}/k8s.yaml", "w") as f:
        yaml.safe_dump_all(builtin, f)
    with open(f"{outdir}/servicemonitors.json", "w") as f:
        json.dump(crds, f)


class Checker:
    def __init__(self):
        self.errors = []

    def ok(self, cond, what):
        if not cond:
            self.errors.append(what)
        return cond


def flag_values(args):
    """{flag: value} for `--flag value` pairs, and the set of lone flags."""
    values, lone = {}, set()
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            values.setdefault(a, []).append(args[i + 1])
            i += 2
        else:
            lone.add(a)
            i += 1
    return values, lone


def subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


def check(scenario, rendered):
    exp = EXPECT[scenario]
    c = Checker()
    docs = load(rendered)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    c.ok(set(by_kind) == exp["kinds"], f"kinds {sorted(by_kind)} != {sorted(exp['kinds'])}")
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (ctr,) = [x for x in spec["containers"] if x["name"] == "bertkit"]
    args = ctr["args"]
    c.ok(all(isinstance(a, str) for a in args), f"args must all be strings: {args}")
    c.ok(not any(re.fullmatch(r"[0-9.]+e[+-]?[0-9]+", a) for a in args),
         f"a number in float notation: {args}")
    c.ok(args[0] == "serve", f"args[0] is {args[0]!r}, not serve")
    values, lone = flag_values(args[1:])
    c.ok(values.get("--host") == ["0.0.0.0"], f"--host {values.get('--host')} (a container must bind 0.0.0.0)")
    c.ok(values.get("--port") == [str(exp["port"])], f"--port {values.get('--port')}")
    for flag, value in exp["flags"].items():
        c.ok(values.get(flag) == [value], f"{flag} {values.get(flag)}, want {value}")
    for flag in exp["absent"]:
        c.ok(flag not in values and flag not in lone, f"{flag} should not be passed")
    c.ok(("--truncate" in lone) == exp.get("truncate", False), "--truncate")
    c.ok(("--json-logs" in lone) == exp.get("json_logs", False), "--json-logs")
    c.ok(values.get("--plan", []) == exp["plans"], f"plans {values.get('--plan')} != {exp['plans']}")
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    grpc = exp["grpc"]
    want_ports = {"http": exp["port"], **({"grpc": grpc[0]} if grpc else {})}
    c.ok(ports == want_ports, f"container ports {ports}, want {want_ports}")
    c.ok(values.get("--grpc-port") == ([str(grpc[0])] if grpc else None),
         f"--grpc-port {values.get('--grpc-port')}")

    probes = {k: ctr.get(k, {}).get("httpGet", {}) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    c.ok(probes["startupProbe"].get("path") == "/v2/health/ready", "startupProbe: GET /v2/health/ready")
    c.ok(probes["livenessProbe"].get("path") == "/v2/health/live", "livenessProbe: GET /v2/health/live")
    if grpc:
        # Kubernetes' gRPC probe (grpc.health.v1, service ""): bertkit answers it as /v2/health/ready.
        c.ok(ctr["readinessProbe"].get("grpc") == {"port": grpc[0]} and not probes["readinessProbe"],
             f"readinessProbe: gRPC health on {grpc[0]}: {ctr['readinessProbe']}")
        del probes["readinessProbe"]
    else:
        c.ok(probes["readinessProbe"].get("path") == "/v2/health/ready", "readinessProbe: GET /v2/health/ready")
    c.ok(all(p.get("port") == "http" for p in probes.values()), "HTTP probes on the http port")
    c.ok(ctr["startupProbe"]["periodSeconds"] * ctr["startupProbe"]["failureThreshold"] >= 120,
         "startupProbe allows at least 2 minutes for loading and warm-up")

    grace = spec.get("terminationGracePeriodSeconds")
    c.ok(grace == exp["grace"], f"terminationGracePeriodSeconds {grace}, want {exp['grace']}")
    shutdown = int(values["--shutdown-timeout-s"][0])
    pre_stop = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if exp["pre_stop"] is None:
        c.ok(pre_stop is None, f"no preStop hook expected: {pre_stop}")
        sleep = 0
    else:
        c.ok(pre_stop == ["sleep", exp["pre_stop"]], f"preStop {pre_stop}")
        sleep = int(exp["pre_stop"])
    c.ok(grace is not None and grace > shutdown + sleep,
         f"grace {grace} must exceed shutdown timeout {shutdown} + preStop {sleep}")

    psc, sc = spec.get("securityContext", {}), ctr.get("securityContext", {})
    c.ok(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, f"pod runs as non-root: {psc}")
    c.ok(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    c.ok(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    c.ok("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
    c.ok(spec.get("automountServiceAccountToken") is False, "no service account token")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
    c.ok("/tmp" in mounts and "emptyDir" in volumes.get(mounts["/tmp"]["name"], {}), "/tmp is an emptyDir")
    if exp["models"] is None:
        c.ok("/models" not in mounts and not spec.get("initContainers"), "models.source=image mounts nothing")
    else:
        m = mounts.get("/models")
        if c.ok(m is not None, "/models mounted"):
            c.ok(m.get("readOnly") is True, "/models read-only in the server")
            vol = volumes.get(m["name"], {})
            if exp["models"] == "pvc":
                c.ok("persistentVolumeClaim" in vol, f"/models from a PVC: {vol}")
            else:
                c.ok("emptyDir" in vol, f"/models an emptyDir: {vol}")
                inits = spec.get("initContainers", [])
                c.ok(len(inits) == 1 and any(x["mountPath"] == "/models" and not x.get("readOnly")
                                             for x in inits[0].get("volumeMounts", [])),
                     "one init container writing /models")

    env = {e["name"]: e for e in ctr.get("env", [])}
    if exp["api_key"] is None:
        c.ok("BERTKIT_API_KEY" not in env, "no API key")
    else:
        ref = env.get("BERTKIT_API_KEY", {}).get("valueFrom", {}).get("secretKeyRef", {})
        c.ok((ref.get("name"), ref.get("key")) == exp["api_key"], f"BERTKIT_API_KEY from {ref}")
        for s in by_kind.get("Secret", []):
            c.ok(s["metadata"]["name"] == exp["api_key"][0] and exp["api_key"][1] in s["data"],
                 "the chart's Secret holds the key the pod reads")

    labels = pod["metadata"]["labels"]
    c.ok(subset(dep["spec"]["selector"]["matchLabels"], labels), "Deployment selector matches its pods")
    c.ok(("replicas" in dep["spec"]) == (exp["replicas"] is not None), "replicas set unless the HPA owns them")
    (svc,) = by_kind["Service"]
    c.ok(subset(svc["spec"]["selector"], labels), "Service selects the pods")
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    want_svc = {"http": (svc_ports.get("http", (0,))[0], "http"), **({"grpc": (grpc[1], "grpc")} if grpc else {})}
    c.ok(svc_ports == want_svc, f"Service ports {svc_ports}, want {want_svc}")
    for p in svc["spec"]["ports"]:
        if p["name"] == "grpc":
            c.ok(p.get("appProtocol") == "kubernetes.io/h2c", "the gRPC Service port says h2c")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        c.ok(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "HPA scales the Deployment")
        c.ok(hpa["apiVersion"] == "autoscaling/v2", "HPA autoscaling/v2")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.ok(subset(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selects the pods")
    for sm in by_kind.get("ServiceMonitor", []):
        c.ok(subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
             "ServiceMonitor selects the Service")
        (ep,) = sm["spec"]["endpoints"]
        c.ok(ep.get("port") == "http" and ep.get("path") == "/metrics", f"ServiceMonitor scrapes http /metrics: {ep}")
        auth = ep.get("authorization")
        if exp["api_key"] is None:
            c.ok(auth is None, "no scrape credentials without a key")
        else:
            cred = (auth or {}).get("credentials", {})
            c.ok((auth or {}).get("type") == "Bearer" and (cred.get("name"), cred.get("key")) == exp["api_key"],
                 f"ServiceMonitor sends the API key as bearer token: {auth}")
    return c.errors


def local_args(rendered, plans_dir, port, grpc_port):
    (dep,) = [d for d in load(rendered) if d["kind"] == "Deployment"]
    (ctr,) = [x for x in dep["spec"]["template"]["spec"]["containers"] if x["name"] == "bertkit"]
    args = list(ctr["args"])
    for i, a in enumerate(args):
        if i == 0:
            continue
        if args[i - 1] == "--host":
            args[i] = "127.0.0.1"
        elif args[i - 1] == "--port":
            args[i] = port
        elif args[i - 1] == "--grpc-port":
            args[i] = grpc_port
        elif args[i - 1] == "--model-repository":
            args[i] = a.replace("/models", plans_dir, 1)
        elif args[i - 1] == "--plan":
            name, _, path = a.rpartition("=")
            args[i] = (name + "=" if name else "") + path.replace("/models/", plans_dir + "/", 1)
    sys.stdout.write("".join(a + "\0" for a in args))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[1] == "args":
        local_args(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "assert":
        errors = check(sys.argv[2], sys.argv[3])
        for e in errors:
            print(f"{sys.argv[3]}: {e}")
        sys.exit(1 if errors else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
