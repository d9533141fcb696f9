#!/usr/bin/env python3
"""Checks the Kubernetes deployment (deploy/kubernetes) and the Grafana dashboard.

For the base and every overlay in deploy/kubernetes/overlays:
  1. renders it with `kubectl kustomize`;
  2. validates every rendered object with kubernetes-validate (PyPI), in strict mode (unknown
     fields are errors), against the pinned Kubernetes version below; offline (the schemas
     ship in the wheel);
  3. checks the security and operability properties docs/operations.md promises: nothing
     privileged, capabilities exactly as listed, no node key in any Secret, probes and
     resources on every container, no service account tokens, network policies, pinned images,
     metrics annotations, the agent's PoP and identity from the downward API.
Then it checks that the Grafana dashboard and the alert rules in docs/operations.md query only
metrics the binaries export (the rules also load in `promtool check rules`), and the
Dockerfile's shape (multi-stage, pinned bases, libpcap only at run time, non-root).

Run with the Python that has kubernetes-validate (scripts/setup.sh installs it in the SDK
venv):  ~/.cache/edgecap/sdk-venv/bin/python tests/deploy/check_manifests.py
Exit status 0 when every check passes; each failure is printed as one `FAIL` line.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

# The Kubernetes version the manifests are validated against, and the oldest they need: the
# agent reads its PoP from the pod's copy of the node's zone label, which the PodTopologyLabels
# admission plugin makes by default from 1.35 (feature gate PodTopologyLabelsAdmission, beta).
KUBERNETES_VERSION = "1.35.0"
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
REQUIRED_OVERLAYS = {"single-node", "production"}
AGENT_CAPS = {"NET_RAW", "NET_ADMIN"}
ZONE_FIELD = "metadata.labels['topology.kubernetes.io/zone']"

# Every metric the binaries export (coordinator, then agent); the dashboard may use no other.
METRICS = {
    "edgecap_api_requests_total", "edgecap_api_request_duration_seconds",
    "edgecap_captures_created_total", "edgecap_captures_finished_total", "edgecap_captures_running",
    "edgecap_agents_connected", "edgecap_sample_fanout_duration_seconds",
    "edgecap_merge_duration_seconds", "edgecap_state_store_errors_total",
    "edgecap_agent_packets_received_total", "edgecap_agent_packets_dropped_total",
    "edgecap_agent_lookback_packets_stored_total", "edgecap_agent_lookback_bytes",
    "edgecap_agent_lookback_age_seconds", "edgecap_agent_spool_bytes",
    "edgecap_agent_upload_lag_seconds", "edgecap_agent_upload_retries_total",
    "edgecap_agent_captures_active", "edgecap_agent_connected",
}


class Report:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, where, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: {what}")
            print(f"FAIL {where}: {what}", flush=True)
        return ok


R = Report()


def mib(quantity):
    """A Kubernetes memory quantity in MiB (Mi, Gi, M, G, plain bytes)."""
    q = str(quantity)
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024,
             "k": 1000 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q) / 2**20


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        R.check(False, path, f"kubectl kustomize failed: {out.stderr.strip()[:2000]}")
        return None, None
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return out.stdout, docs


def validate(name, text):
    """kubernetes-validate's own command line, strict, on the rendered file."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"edgecap-{name}-", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        out = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version",
             KUBERNETES_VERSION, "--quiet", path],
            capture_output=True, text=True)
        R.check(out.returncode == 0, name,
                f"kubernetes-validate --strict -k {KUBERNETES_VERSION} failed:\n{out.stdout}{out.stderr}")
    finally:
        os.unlink(path)


def validator_is_strict():
    """The check above is worth something only if strict mode refuses an unknown field."""
    import kubernetes_validate
    bogus = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automount": False}
    try:
        kubernetes_validate.validate(bogus, KUBERNETES_VERSION, strict=True)
        refused = False
    except kubernetes_validate.ValidationError:
        refused = True
    R.check(refused, "kubernetes-validate", "strict mode accepted an unknown field")


def pod_spec(obj):
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    if kind == "Pod":
        return obj
    return None


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    """The literal value of an env var, or of a `--flag=$(VAR)` argument's variable."""
    e = env_of(container).get(name)
    return None if e is None else e.get("value")


def arg(container, flag):
    """The value of `--flag=VALUE` in args, with $(VAR) resolved from literal env values."""
    for a in container.get("args", []):
        if a.startswith(flag + "="):
            value = a[len(flag) + 1:]
            return re.sub(r"\$\((\w+)\)", lambda m: env_value(container, m.group(1)) or m.group(0), value)
    return None


def private_keys(secret):
    """How many private keys a Secret object holds."""
    n = 0
    for section in ("data", "stringData"):
        for key, value in (secret.get(section) or {}).items():
            text = value
            if section == "data":
                try:
                    text = base64.b64decode(value).decode("utf-8", "replace")
                except ValueError:
                    text = ""
            if "PRIVATE KEY" in (text or "") or re.search(r"(^|[-_.])key(\.pem)?$", key):
                n += 1
    return n


def check_containers(where, spec, is_agent):
    pod = spec["spec"]
    psc = pod.get("securityContext", {})
    R.check(pod.get("automountServiceAccountToken") is False, where,
            "automountServiceAccountToken must be false (no pod talks to the Kubernetes API)")
    R.check(pod.get("serviceAccountName") not in (None, "", "default"), where,
            "runs as the namespace's default service account")
    R.check(pod.get("hostNetwork", False) == is_agent, where,
            "hostNetwork is for the agent only" if not is_agent else "the agent needs hostNetwork")
    R.check(not pod.get("hostPID") and not pod.get("hostIPC"), where, "hostPID/hostIPC")
    for v in pod.get("volumes", []):
        if "hostPath" in v:
            R.check(is_agent and v["hostPath"]["path"].startswith("/var/lib/edgecap/"), where,
                    f"hostPath volume {v['name']} ({v['hostPath']['path']}): only the agent's own "
                    "directories under /var/lib/edgecap may be mounted from the host")
    all_containers = pod.get("initContainers", []) + pod.get("containers", [])
    for c in all_containers:
        w = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        R.check(seccomp == "RuntimeDefault", w, f"seccompProfile {seccomp!r}, want RuntimeDefault")
        R.check(sc.get("privileged") is not True, w, "privileged")
        R.check(sc.get("allowPrivilegeEscalation") is False, w, "allowPrivilegeEscalation must be false")
        R.check(sc.get("readOnlyRootFilesystem") is True, w, "readOnlyRootFilesystem must be true")
        caps = sc.get("capabilities", {})
        R.check(caps.get("drop") == ["ALL"], w, f"capabilities.drop {caps.get('drop')}, want [ALL]")
        added = set(caps.get("add", []))
        want = AGENT_CAPS if is_agent else set()
        R.check(added == want and len(caps.get("add", [])) == len(want), w,
                f"capabilities.add {sorted(added)}, want exactly {sorted(want)}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if is_agent:
            # Added capabilities only work for uid 0 (no ambient capabilities in Kubernetes).
            R.check(uid == 0, w, f"runAsUser {uid}: the agent's capabilities need uid 0")
        else:
            R.check(non_root is True and isinstance(uid, int) and uid != 0, w,
                    f"must run as non-root (runAsNonRoot {non_root}, runAsUser {uid})")
        if c in pod.get("containers", []):
            R.check("livenessProbe" in c, w, "no livenessProbe")
            R.check("readinessProbe" in c, w, "no readinessProbe")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                R.check(r in res.get(kind, {}), w, f"resources.{kind}.{r} is not set")
        if "memory" in res.get("requests", {}) and "memory" in res.get("limits", {}):
            R.check(mib(res["limits"]["memory"]) >= mib(res["requests"]["memory"]), w,
                    "memory limit below the request")
        image = c.get("image", "")
        tag = image.rsplit("@", 1)[-1] if "@" in image else (image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else "")
        R.check(tag not in ("", "latest"), w, f"image {image!r} is not pinned to a tag or digest")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and is_agent:
                R.check(False, w, f"env {e['name']} reads Secret {ref.get('name')}: no Secret is per node")
        if is_agent:
            for ef in c.get("envFrom", []):
                R.check("secretRef" not in ef, w, "envFrom a Secret: no Secret is per node")


def check_metrics_annotations(where, spec):
    ann = spec.get("metadata", {}).get("annotations", {})
    R.check(ann.get("prometheus.io/scrape") == "true", where, "prometheus.io/scrape is not \"true\"")
    ports = {p["containerPort"] for c in spec["spec"]["containers"] for p in c.get("ports", [])}
    port = ann.get("prometheus.io/port")
    R.check(port is not None and int(port) in ports, where,
            f"prometheus.io/port {port!r} is not one of the container ports {sorted(ports)}")
    R.check(ann.get("prometheus.io/path") == "/metrics", where, "prometheus.io/path is not /metrics")


def check_agent(where, ds, objs):
    spec = ds["spec"]
    tmpl = spec["template"]["spec"]
    c = tmpl["containers"][0]
    env = env_of(c)
    # Identity: PoP from the node (zone label copied onto the pod) or a literal per overlay;
    # agent id from the node's name.
    pop = env.get("EDGECAP_POP")
    pop_ok = pop is not None and (
        (pop.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == ZONE_FIELD
        or (pop.get("value") and "valueFrom" not in pop))
    R.check(pop_ok, where, f"EDGECAP_POP must come from the downward API ({ZONE_FIELD}) or be a literal")
    aid = env.get("EDGECAP_AGENT_ID", {})
    R.check((aid.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName", where,
            "EDGECAP_AGENT_ID must be the node's name (downward API spec.nodeName)")
    R.check("EDGECAP_ENROLL_TOKEN_FILE" in env, where, "the agent does not enroll (no EDGECAP_ENROLL_TOKEN_FILE)")

    # The node's key lives on the node: the cert and key paths are under a hostPath mount.
    host_vols = {v["name"]: v["hostPath"]["path"] for v in tmpl.get("volumes", []) if "hostPath" in v}
    host_mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in host_vols]
    for var in ("EDGECAP_TLS_CERT", "EDGECAP_TLS_KEY"):
        path = env_value(c, var) or ""
        R.check(any(path.startswith(m.rstrip("/") + "/") for m in host_mounts), where,
                f"{var}={path!r} is not on a hostPath: the node's key must stay on the node")

    # Secrets: only the bootstrap token (not a key, expiring, limited to PoP patterns), and
    # only its `token` item, whatever else that Secret may hold.
    for v in tmpl.get("volumes", []):
        sources = [v] + [s for s in (v.get("projected") or {}).get("sources", [])]
        for s in sources:
            sec = s.get("secret")
            if not sec:
                continue
            keys = [i["key"] for i in sec.get("items", [])]
            R.check(keys == ["token"], where,
                    f"volume {v['name']} mounts Secret {sec.get('secretName') or sec.get('name')} "
                    f"items {keys or 'ALL'}: the agent may mount only the bootstrap token")

    # Spool on the host, with a size bound.
    spool = env_value(c, "EDGECAP_SPOOL_DIR") or arg(c, "--spool-dir") or "/var/lib/edgecap/spool"
    R.check(any(spool.rstrip("/") == m.rstrip("/") or spool.startswith(m.rstrip("/") + "/") for m in host_mounts),
            where, f"spool {spool!r} is not on a hostPath (shards must survive a restart)")
    spool_max = arg(c, "--spool-max-mib")
    R.check(spool_max is not None and spool_max.isdigit() and int(spool_max) > 0, where,
            f"--spool-max-mib {spool_max!r}: the spool needs a size bound")

    # Resources follow the lookback: steady state measured at 31 MiB + lookback + 4 MiB per
    # interface; a running full capture adds about 40 MiB (docs/operations.md, "Sizing").
    lookback = arg(c, "--lookback-memory-mib")
    R.check(lookback is not None and lookback.isdigit(), where, f"--lookback-memory-mib {lookback!r}")
    res = c.get("resources", {})
    if lookback and lookback.isdigit() and "memory" in res.get("requests", {}) and "memory" in res.get("limits", {}):
        req, lim = mib(res["requests"]["memory"]), mib(res["limits"]["memory"])
        R.check(req >= int(lookback) + 35, where,
                f"memory request {req:.0f} MiB < lookback {lookback} MiB + 35 MiB measured overhead")
        R.check(lim >= req + 40, where, f"memory limit {lim:.0f} MiB leaves no room for a full capture (+40 MiB)")
    R.check(arg(c, "--metrics-listen") is not None, where, "no --metrics-listen: probes and metrics need it")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        R.check((c.get(probe, {}).get("httpGet") or {}).get("path") == path, where, f"{probe} is not {path}")

    # Updates: rolling, a bounded number of nodes at a time, no surge (host ports), and each
    # new agent ready for a while before the next node.
    us = spec.get("updateStrategy", {})
    ru = us.get("rollingUpdate", {})
    R.check(us.get("type") == "RollingUpdate" and ru.get("maxUnavailable") not in (None, 0, "0", "100%"),
            where, f"updateStrategy {us}: roll a bounded number of nodes at a time")
    R.check(ru.get("maxSurge") in (0, "0", None), where, "maxSurge must be 0 (the agent uses host ports)")
    R.check(spec.get("minReadySeconds", 0) > 0, where, "minReadySeconds: 0 lets a broken release roll on")


def check_coordinator(where, dep, objs, single):
    spec = dep["spec"]
    c = spec["template"]["spec"]["containers"][0]
    state = env_value(c, "EDGECAP_STATE") or arg(c, "--state") or "embedded"
    replicas = spec.get("replicas", 1)
    if single:
        R.check(replicas == 1, where, f"{replicas} replicas with embedded state (one writer only)")
        R.check(spec.get("strategy", {}).get("type") == "Recreate", where,
                "embedded state needs strategy Recreate (the old pod must let go of the store)")
        vols = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        data = arg(c, "--data-dir")
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == data), None)
        R.check(mount is not None and "persistentVolumeClaim" in vols.get(mount["name"], {}), where,
                f"embedded state in --data-dir {data} is not on a PersistentVolumeClaim")
    else:
        R.check(replicas == 3, where, f"{replicas} replicas, want 3")
        R.check(state.startswith("etcd://") and state.count(":2379") >= 3, where,
                f"EDGECAP_STATE {state!r}: want etcd with all three members")
        ru = spec.get("strategy", {}).get("rollingUpdate", {})
        R.check(spec.get("strategy", {}).get("type") == "RollingUpdate" and ru.get("maxUnavailable") in (0, "0"),
                where, "upgrades must replace one coordinator at a time, never lowering capacity")
        objects = env_value(c, "EDGECAP_OBJECTS") or arg(c, "--objects") or "local"
        R.check(objects.startswith("s3://"), where, f"EDGECAP_OBJECTS {objects!r}: replicas must share a bucket")
    R.check(arg(c, "--api-tls-cert") and arg(c, "--api-tls-key"), where, "the API is not served over TLS")
    for probe in ("livenessProbe", "readinessProbe"):
        R.check((c.get(probe, {}).get("httpGet") or {}).get("scheme") == "HTTPS", where, f"{probe} must use HTTPS")
    R.check((c.get("readinessProbe", {}).get("httpGet") or {}).get("path") == "/readyz", where,
            "readinessProbe is not /readyz")
    R.check(arg(c, "--enroll-ca-key") is not None, where, "coordinators do not enroll agents (--enroll-ca-key)")
    R.check(arg(c, "--retention-days") is not None, where, "no --retention-days")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def check_overlay(name, path, single):
    text, objs = render(path)
    if objs is None:
        return
    validate(name, text)
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        w = f"{name} {o['kind']}/{o['metadata']['name']}"
        R.check(o["metadata"].get("namespace") or o["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"),
                w, "no namespace")
        if o["kind"] == "ServiceAccount":
            R.check(o.get("automountServiceAccountToken") is False, w, "automountServiceAccountToken must be false")
        if o["kind"] == "Secret":
            R.check(private_keys(o) <= 1, w, "a Secret holds more than one private key")
            R.check(o["metadata"].get("namespace") != "edgecap-agents" or private_keys(o) == 0, w,
                    "a Secret in the agents' namespace holds a private key")
        if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
            R.check(False, w, "no pod needs the Kubernetes API: no RBAC objects")

    nss = {o["metadata"]["name"]: o for o in by_kind.get("Namespace", [])}
    R.check(nss.get("edgecap", {}).get("metadata", {}).get("labels", {})
            .get("pod-security.kubernetes.io/enforce") == "restricted", name,
            "namespace edgecap must enforce the restricted Pod Security Standard")

    workloads = [o for o in objs if pod_spec(o) is not None]
    agents = [o for o in workloads if o["kind"] == "DaemonSet"]
    R.check(len(agents) == 1 and agents[0]["metadata"]["name"] == "edgecap-agent", name,
            "want exactly one DaemonSet, edgecap-agent")
    for o in workloads:
        w = f"{name} {o['kind']}/{o['metadata']['name']}"
        is_agent = o["kind"] == "DaemonSet"
        check_containers(w, pod_spec(o), is_agent)
        check_metrics_annotations(w, pod_spec(o))
        if o["kind"] in ("Deployment", "StatefulSet"):
            labels = pod_spec(o)["metadata"].get("labels", {})
            R.check(any(selects(p["spec"].get("selector"), labels) for p in by_kind.get("PodDisruptionBudget", [])),
                    w, "no PodDisruptionBudget selects it")
    for ds in agents:
        check_agent(f"{name} DaemonSet/edgecap-agent", ds, objs)

    deps = [o for o in by_kind.get("Deployment", []) if o["metadata"]["name"] == "edgecap-coordinator"]
    R.check(len(deps) == 1, name, "no Deployment edgecap-coordinator")
    for d in deps:
        check_coordinator(f"{name} Deployment/edgecap-coordinator", d, objs, single)
    services = {o["metadata"]["name"] for o in by_kind.get("Service", [])}
    R.check({"edgecap-api", "edgecap-control"} <= services, name, f"services {sorted(services)}")

    sts = [o for o in by_kind.get("StatefulSet", []) if o["metadata"]["name"] == "edgecap-etcd"]
    if single:
        R.check(not sts, name, "the single-node overlay runs no etcd")
    else:
        R.check(len(sts) == 1, name, "no etcd StatefulSet")
        for s in sts:
            R.check(s["spec"].get("replicas") == 3, name, "etcd needs three members")
            R.check(bool(s["spec"].get("volumeClaimTemplates")), name, "etcd members need persistent volumes")

    # Network policies: default deny; control port open (agents come from node addresses and
    # other PoPs, mutual TLS decides); API only from selected clients; etcd only from coordinators.
    pols = {o["metadata"]["name"]: o for o in by_kind.get("NetworkPolicy", [])}
    deny = pols.get("default-deny-ingress", {}).get("spec", {})
    R.check(deny.get("podSelector") == {} and deny.get("policyTypes") == ["Ingress"] and not deny.get("ingress"),
            name, "no default-deny-ingress NetworkPolicy")
    coord = pols.get("edgecap-coordinator", {}).get("spec", {})
    rules = coord.get("ingress", [])
    def ports(rule):
        return {p.get("port") for p in rule.get("ports", [])}
    R.check(any(7443 in ports(r) and not r.get("from") for r in rules), name,
            "agents cannot reach the control port 7443")
    R.check(all(r.get("from") for r in rules if 9440 in ports(r) or not r.get("ports")) and
            any(9440 in ports(r) for r in rules), name,
            "the API port 9440 must be open to selected clients only")
    if not single:
        etcd = pols.get("edgecap-etcd", {}).get("spec", {})
        client_rules = [r for r in etcd.get("ingress", []) if 2379 in ports(r)]
        R.check(bool(client_rules) and all(
            all(f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") in
                ("edgecap-coordinator", "edgecap-etcd") and "namespaceSelector" not in f for f in r.get("from", [{}]))
            for r in client_rules), name, "etcd's client port must be reachable by coordinators (and peers) only")
    print(f"ok {name}: rendered {len(objs)} objects", flush=True)


def check_dashboard():
    path = os.path.join(ROOT, "deploy", "grafana", "edgecap.json")
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        R.check(False, path, f"does not parse: {e}")
        return
    exprs = []
    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("expr"), str):
                exprs.append(x["expr"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(dash)
    used = set()
    for e in exprs:
        for m in re.findall(r"\bedgecap_[a-z_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            R.check(base in METRICS, "grafana", f"unknown metric {m} in {e!r}")
            used.add(base)
    R.check(not (METRICS - used), "grafana", f"metrics without a panel: {sorted(METRICS - used)}")
    print(f"ok grafana: {len(exprs)} queries", flush=True)


def check_alert_rules():
    """The alert rules docs/operations.md gives must load in Prometheus (promtool) and use
    only metrics the binaries export."""
    path = os.path.join(ROOT, "docs", "operations.md")
    text = open(path).read()
    m = re.search(r"### Alert rules\n.*?```yaml\n(.*?)```", text, re.S)
    if not R.check(m is not None, path, "no ```yaml block under '### Alert rules'"):
        return
    rules = m.group(1)
    for metric in set(re.findall(r"\bedgecap_[a-z_]+", rules)):
        R.check(re.sub(r"_(bucket|sum|count)$", "", metric) in METRICS, path, f"alert rules use unknown metric {metric}")
    promtool = shutil.which("promtool")
    if promtool is None:
        R.check(os.environ.get("CI") is None, path, "promtool is missing (scripts/setup.sh installs prometheus)")
        print("skip: promtool is not installed; the alert rules were not loaded", flush=True)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="edgecap-rules-", delete=False) as f:
        f.write(rules)
        tmp = f.name
    try:
        out = subprocess.run([promtool, "check", "rules", tmp], capture_output=True, text=True)
        R.check(out.returncode == 0, path, f"promtool check rules failed:\n{out.stdout}{out.stderr}")
    finally:
        os.unlink(tmp)
    print(f"ok alert rules: {rules.count('- alert:')} rules load in promtool", flush=True)


def check_dockerfile():
    path = os.path.join(ROOT, "deploy", "Dockerfile")
    text = open(path).read()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    R.check(len(froms) >= 2, path, "not multi-stage")
    R.check(all(":" in f and not f.endswith(":latest") for f in froms), path, f"unpinned base image in {froms}")
    final = text[text.rfind("\nFROM"):]
    R.check("libpcap0.8" in final and "libpcap-dev" not in final, path, "runtime stage must have libpcap only")
    R.check(re.search(r"^USER\s+65532", final, re.M) is not None, path, "runtime stage does not default to non-root")


def main():
    validator_is_strict()
    overlays = sorted(d for d in os.listdir(os.path.join(K8S, "overlays"))
                      if os.path.isfile(os.path.join(K8S, "overlays", d, "kustomization.yaml")))
    R.check(REQUIRED_OVERLAYS <= set(overlays), "overlays", f"found {overlays}, want {sorted(REQUIRED_OVERLAYS)}")
    R.check(not os.path.exists(os.path.join(K8S, "issue-node-certs.sh")), "deploy/kubernetes",
            "issue-node-certs.sh (every node's key in one Secret) must be gone")
    check_overlay("base", os.path.join(K8S, "base"), single=False)
    for o in overlays:
        check_overlay(o, os.path.join(K8S, "overlays", o), single=(o == "single-node"))
    check_dashboard()
    check_alert_rules()
    check_dockerfile()
    print(f"check_manifests: {R.passed} checks passed, {len(R.failures)} failed "
          f"(Kubernetes {KUBERNETES_VERSION}, strict)")
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
