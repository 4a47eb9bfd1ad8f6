#!/usr/bin/env bash
# Validates the Kubernetes deployment (deploy/kubernetes, deploy/helm/secureclaw) with no
# cluster, no registry and no helm: only PyPI packages in a venv of their own.
#
#   scripts/validate-manifests.sh                      # deploy/kubernetes and the chart
#   scripts/validate-manifests.sh --kustomize-dir DIR  # another copy of the manifests
#   scripts/validate-manifests.sh --chart DIR          # another copy of the chart
#
# 1. venv: target/validate-manifests-venv with pinned kubernetes-validate and checkov (created
#    once, reused while the pins are unchanged; PYTHON names the interpreter, default python3).
# 2. render: the kustomization's `resources` concatenated (it uses nothing else, and anything
#    else is refused); where kubectl exists, `kubectl kustomize` must render the same objects.
# 3. schema: every object against the Kubernetes OpenAPI schema of K8S_VERSION (default
#    1.33.0), strict (unknown fields are errors), with kubernetes-validate.
# 4. checkov: `--framework kubernetes` on the manifests; any failed check fails, except those
#    skipped in a manifest by a `checkov.io/skipN: CKV_K8S_xx=reason` annotation, and a skip
#    without a reason fails.
# 5. security: the settings docs/kubernetes.md promises, read from the rendered YAML.
# 6. chart: what can be checked without helm (docs/kubernetes.md says what that is); where helm
#    exists, also `helm lint --strict` and steps 3-5 on `helm template`.
#
# Exits non-zero when anything fails, after running every step; prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
K8S_VERSION="${K8S_VERSION:-1.33.0}"
VENV=target/validate-manifests-venv
PYTHON="${PYTHON:-python3}"
KUSTOMIZE_DIR=deploy/kubernetes
CHART_DIR=deploy/helm/secureclaw

while [ $# -gt 0 ]; do
  case "$1" in
    --kustomize-dir) KUSTOMIZE_DIR="$2"; shift 2 ;;
    --chart) CHART_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "validate-manifests.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "$KUSTOMIZE_DIR/kustomization.yaml" ] || { echo "validate-manifests.sh: no $KUSTOMIZE_DIR/kustomization.yaml" >&2; exit 2; }
[ -f "$CHART_DIR/Chart.yaml" ] || { echo "validate-manifests.sh: no $CHART_DIR/Chart.yaml" >&2; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=()
T0=$EPOCHREALTIME
t_start() { T=$EPOCHREALTIME; }
t_end() { awk -v a="$T" -v b="$EPOCHREALTIME" -v n="$1" 'BEGIN { printf "   %s: %.1f s\n", n, b - a }'; }
fail() { echo "FAILED: $1" >&2; FAILED+=("$1"); }

# --- 1. venv -------------------------------------------------------------------------------
echo "== venv $VENV (kubernetes-validate==$KUBERNETES_VALIDATE_VERSION, checkov==$CHECKOV_VERSION)"
t_start
PINS="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION checkov==$CHECKOV_VERSION"
STAMP="$VENV/.pins"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PINS" ]; then
  echo "   reusing it"
else
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || { echo "validate-manifests.sh: $PYTHON is older than 3.9" >&2; exit 1; }
  "$PYTHON" -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --disable-pip-version-check -q $PINS
  echo "$PINS" >"$STAMP"
  echo "   created"
fi
t_end venv
VPY="$VENV/bin/python"

# The checks below, as one Python program with subcommands.
cat >"$WORK/checks.py" <<'PY'
import os, re, sys
import yaml

def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

def key(o):
    m = o.get("metadata", {})
    return (o.get("kind"), m.get("namespace", ""), m.get("name"))

def render(kdir):
    """The kustomization's resources, concatenated. Refuses every other kustomize feature, so
    the result is what `kubectl apply -k` would apply."""
    k = yaml.safe_load(open(os.path.join(kdir, "kustomization.yaml")))
    extra = set(k) - {"apiVersion", "kind", "resources"}
    if extra:
        sys.exit(f"kustomization.yaml uses {sorted(extra)}: only `resources` is rendered here; "
                 "extend scripts/validate-manifests.sh before using more")
    out = []
    for r in k["resources"]:
        p = os.path.join(kdir, r)
        if not os.path.isfile(p):
            sys.exit(f"kustomization.yaml names {r}, which is not a file here")
        out.extend(docs(p))
    yaml.safe_dump_all(out, sys.stdout, sort_keys=False)

def same(a, b):
    da = sorted(docs(a), key=lambda o: str(key(o)))
    db = sorted(docs(b), key=lambda o: str(key(o)))
    if da != db:
        print("the rendered objects differ from `kubectl kustomize`:", file=sys.stderr)
        print("  here:   ", [key(o) for o in da], file=sys.stderr)
        print("  kubectl:", [key(o) for o in db], file=sys.stderr)
        sys.exit(1)
    print(f"   kubectl kustomize renders the same {len(da)} objects")

SKIP_RE = re.compile(r"^(CKV2?_K8S_\d+)=(.{10,})$")

def skips(paths):
    """Every checkov skip annotation names one check and gives a reason."""
    bad = []
    for p in paths:
        for o in docs(p):
            for k, v in (o.get("metadata", {}).get("annotations") or {}).items():
                if k.startswith("checkov.io/skip"):
                    m = SKIP_RE.match(str(v))
                    if not m:
                        bad.append(f"{p}: {key(o)}: {k}: {v!r} is not CKV_K8S_xx=<reason of 10+ characters>")
                    else:
                        print(f"   skipped in {os.path.basename(p)} ({o['kind']}/{o['metadata']['name']}): {m.group(1)}: {m.group(2)}")
    for b in bad:
        print("FAIL " + b, file=sys.stderr)
    sys.exit(1 if bad else 0)

def security(path, expect_namespace):
    objs = docs(path)
    problems, passed = [], []

    def need(cond, what):
        (passed if cond else problems).append(what)

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    need(not by_kind.get("Secret"), "no Secret is shipped (the passphrase Secret is created by the operator)")

    ns = None
    if expect_namespace:
        nss = by_kind.get("Namespace", [])
        need(len(nss) == 1, "exactly one Namespace")
        if nss:
            ns = nss[0]["metadata"]["name"]
            labels = nss[0]["metadata"].get("labels") or {}
            need(labels.get("pod-security.kubernetes.io/enforce") == "restricted",
                 "the Namespace enforces the restricted Pod Security Standard")
            for o in objs:
                if o["kind"] != "Namespace":
                    need(o["metadata"].get("namespace") == ns, f"{o['kind']}/{o['metadata']['name']} is in namespace {ns}")

    deps = by_kind.get("Deployment", [])
    need(len(deps) == 1, "exactly one Deployment")
    if not deps:
        return report(problems, passed)
    d = deps[0]
    spec = d["spec"]
    need(spec.get("replicas") == 1, "Deployment: replicas 1 (single-writer store)")
    need((spec.get("strategy") or {}).get("type") == "Recreate", "Deployment: strategy Recreate")
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    psc = pod.get("securityContext") or {}
    need(pod.get("automountServiceAccountToken") is False, "pod: automountServiceAccountToken false")
    san = pod.get("serviceAccountName")
    need(san not in (None, "", "default"), "pod: a dedicated ServiceAccount")
    sas = [s for s in by_kind.get("ServiceAccount", []) if s["metadata"]["name"] == san]
    need(len(sas) == 1 and sas[0].get("automountServiceAccountToken") is False,
         f"ServiceAccount {san} exists with automountServiceAccountToken false")
    for h in ("hostNetwork", "hostPID", "hostIPC"):
        need(not pod.get(h), f"pod: no {h}")
    need(psc.get("runAsNonRoot") is True, "pod: runAsNonRoot")
    for f in ("runAsUser", "runAsGroup", "fsGroup"):
        need(psc.get(f) == 10001, f"pod: {f} 10001")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}

    containers = (pod.get("initContainers") or []) + pod["containers"]
    for c in containers:
        n = f"container {c['name']}"
        sc = c.get("securityContext") or {}
        eff = lambda f: sc.get(f, psc.get(f))
        need(eff("runAsNonRoot") is True, f"{n}: runAsNonRoot")
        need(eff("runAsUser") not in (None, 0), f"{n}: a non-root runAsUser")
        need(sc.get("readOnlyRootFilesystem") is True, f"{n}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{n}: allowPrivilegeEscalation false")
        need(sc.get("privileged") in (None, False), f"{n}: not privileged")
        caps = sc.get("capabilities") or {}
        need("ALL" in (caps.get("drop") or []), f"{n}: capabilities drop ALL")
        need(not caps.get("add"), f"{n}: no capability added")
        need((eff("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{n}: seccomp RuntimeDefault")
        need(sc.get("procMount") in (None, "Default"), f"{n}: default (masked) /proc")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                need(r in (res.get(kind) or {}), f"{n}: {kind}.{r} set")

    c = pod["containers"][0]
    n = f"container {c['name']}"
    env = c.get("env") or []
    envd = {e["name"]: e.get("value") for e in env}
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    # The passphrase: --passphrase-file PATH inside a read-only mount of a Secret volume.
    args = (c.get("command") or []) + (c.get("args") or [])
    pf = args[args.index("--passphrase-file") + 1] if "--passphrase-file" in args[:-1] else None
    need(pf is not None, f"{n}: the passphrase comes from --passphrase-file")
    secret_name = None
    if pf:
        m = mounts.get(os.path.dirname(pf)) or mounts.get(pf)
        vol = volumes.get(m["name"]) if m else None
        need(bool(vol and "secret" in vol and m.get("readOnly") is True),
             f"{n}: {pf} is in a read-only Secret volume mount")
        if vol and "secret" in vol:
            secret_name = vol["secret"]["secretName"]
            items = vol["secret"].get("items")
            need(items is None or os.path.basename(pf) in [i["path"] for i in items],
                 f"{n}: the Secret volume provides {os.path.basename(pf)}")
    need(not any(re.search("PASSPHRASE", e["name"], re.I) for e in env),
         f"{n}: no environment variable named *PASSPHRASE*")
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in env
            if (e.get("valueFrom") or {}).get("secretKeyRef")]
    refs += [ef["secretRef"]["name"] for ef in c.get("envFrom") or [] if ef.get("secretRef")]
    need(secret_name not in refs, f"{n}: the passphrase Secret is not turned into environment variables")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        port = hg.get("port")
        need(hg.get("path") == "/health" and (port in ports or port in ports.values()),
             f"{n}: {probe} GETs /health on the server port")
    listen = envd.get("SECURECLAW_LISTEN") or ""
    need(listen.rsplit(":", 1)[-1] in {str(p) for p in ports.values()},
         f"{n}: SECURECLAW_LISTEN ({listen}) is the container port")
    tmp = mounts.get("/tmp")
    need(bool(tmp and "emptyDir" in volumes.get(tmp["name"], {})), f"{n}: /tmp is an emptyDir")
    data = envd.get("SECURECLAW_DATA_DIR")
    dm = mounts.get(data) if data else None
    dv = volumes.get(dm["name"]) if dm else None
    need(bool(dv and "persistentVolumeClaim" in dv), f"{n}: the data dir ({data}) is a PersistentVolumeClaim")
    if dv and "persistentVolumeClaim" in dv:
        claim = dv["persistentVolumeClaim"]["claimName"]
        need(any(p["metadata"]["name"] == claim for p in by_kind.get("PersistentVolumeClaim", [])),
             f"the PersistentVolumeClaim {claim} is part of the deployment")

    svcs = by_kind.get("Service", [])
    need(len(svcs) == 1, "exactly one Service")
    for s in svcs:
        need(s["spec"].get("type", "ClusterIP") == "ClusterIP", "Service: ClusterIP")
        sel = s["spec"].get("selector") or {}
        need(bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items()), "Service: selects the server pod")
        need(all(p.get("targetPort") in ports or p.get("targetPort") in ports.values()
                 for p in s["spec"]["ports"]), "Service: targets the server port")

    nps = by_kind.get("NetworkPolicy", [])
    deny = [p for p in nps if p["spec"].get("podSelector") in ({}, None)
            and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes") or [])
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    need(len(deny) == 1, "a default-deny NetworkPolicy (every pod, Ingress and Egress, no rule)")
    server = [p for p in nps if p not in deny
              and all(pod_labels.get(k) == v for k, v in
                      ((p["spec"].get("podSelector") or {}).get("matchLabels") or {}).items())
              and (p["spec"].get("podSelector") or {}).get("matchLabels")]
    need(len(server) == 1, "one NetworkPolicy for the server pod")
    for p in server:
        ing = p["spec"].get("ingress") or []
        need(bool(ing) and all(r.get("ports") and all(x.get("port") in ports.values() or x.get("port") in ports
                                                       for x in r["ports"]) for r in ing),
             "NetworkPolicy: ingress only to the server port")
        eg = p["spec"].get("egress") or []
        need(bool(eg) and all(r.get("ports") and all(x.get("port") == 53 for x in r["ports"]) and r.get("to")
                              for r in eg),
             "NetworkPolicy: egress to DNS (port 53) only")
    return report(problems, passed)

def report(problems, passed):
    for p in problems:
        print("FAIL " + p, file=sys.stderr)
    print(f"   {len(passed)} security checks passed, {len(problems)} failed")
    sys.exit(1 if problems else 0)

def chart(cdir, rendered, cargo_toml):
    """What can be checked without helm: the chart's files parse, its template syntax balances,
    every .Values path and include exists, it makes the same kinds as the manifests, and its
    defaults carry the same security settings as the rendered manifests."""
    problems, passed = [], []

    def need(cond, what):
        (passed if cond else problems).append(what)

    ch = yaml.safe_load(open(os.path.join(cdir, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(cdir, "values.yaml")))
    need(ch.get("apiVersion") == "v2", "Chart.yaml: apiVersion v2")
    need(ch.get("name") == "secureclaw", "Chart.yaml: name secureclaw")
    need(bool(re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", str(ch.get("version")))), "Chart.yaml: version is SemVer")
    cargo = re.search(r'^version = "([^"]+)"', open(cargo_toml).read(), re.M).group(1)
    need(str(ch.get("appVersion")) == cargo, f"Chart.yaml: appVersion is the release ({cargo})")
    objs = docs(rendered)
    dep = next(o for o in objs if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    need(c["image"] == f"secureclaw:{cargo}", f"deploy/kubernetes: image secureclaw:{cargo}")

    tdir = os.path.join(cdir, "templates")
    texts = {f: open(os.path.join(tdir, f)).read() for f in sorted(os.listdir(tdir))}
    need("NOTES.txt" in texts and "_helpers.tpl" in texts, "templates: NOTES.txt and _helpers.tpl exist")
    defined = set(re.findall(r'{{-?\s*define\s+"([^"]+)"', "".join(texts.values())))
    kinds = set()
    for f, t in texts.items():
        need(t.count("{{") == t.count("}}"), f"{f}: every {{{{ is closed")
        opens = len(re.findall(r"{{-?\s*(?:if|range|with|define|block)\b", t))
        ends = len(re.findall(r"{{-?\s*end\s*-?}}", t))
        need(opens == ends, f"{f}: {opens} blocks opened, {ends} ended")
        for path in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", t):
            v, ok = values, True
            for part in path.strip(".").split("."):
                if isinstance(v, dict) and part in v:
                    v = v[part]
                else:
                    ok = False
                    break
            need(ok, f"{f}: .Values{path} is in values.yaml")
        for name in re.findall(r'(?:include|template)\s+"([^"]+)"', t):
            need(name in defined, f"{f}: {name} is defined")
        kinds |= set(re.findall(r"^kind:\s*(\w+)\s*$", t, re.M))
    need(kinds == {o["kind"] for o in objs}, f"templates make the kinds of deploy/kubernetes ({sorted(kinds)})")
    need(values["podSecurityContext"] == pod["securityContext"], "values: podSecurityContext as in deploy/kubernetes")
    need(values["securityContext"] == c["securityContext"], "values: securityContext as in deploy/kubernetes")
    need(values["resources"] == c["resources"], "values: resources as in deploy/kubernetes")
    for v, p in (("startup", "startupProbe"), ("readiness", "readinessProbe"), ("liveness", "livenessProbe")):
        want = {k: x for k, x in c[p].items() if k != "httpGet"}
        need(values["probes"][v] == want, f"values: {p} timings as in deploy/kubernetes")
    dt = texts.get("deployment.yaml", "")
    need("--passphrase-file" in dt and "path: /health" in dt, "deployment template: --passphrase-file and /health probes")
    need(not re.search(r"name:\s*[A-Z0-9_]*PASSPHRASE", dt), "deployment template: no *PASSPHRASE* variable")
    for p in problems:
        print("FAIL " + p, file=sys.stderr)
    print(f"   {len(passed)} chart checks passed, {len(problems)} failed")
    sys.exit(1 if problems else 0)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "render":
    render(args[0])
elif cmd == "same":
    same(*args)
elif cmd == "skips":
    skips(args)
elif cmd == "security":
    security(args[0], args[1] == "with-namespace")
elif cmd == "chart":
    chart(*args)
PY
checks() { "$VPY" "$WORK/checks.py" "$@"; }

# --- 2. render -----------------------------------------------------------------------------
echo "== render $KUSTOMIZE_DIR"
t_start
RENDERED="$WORK/kustomize.yaml"
if checks render "$KUSTOMIZE_DIR" >"$RENDERED"; then
  echo "   $(grep -c '^kind:' "$RENDERED") objects"
  if command -v kubectl >/dev/null 2>&1; then
    if kubectl kustomize "$KUSTOMIZE_DIR" >"$WORK/kubectl.yaml"; then
      checks same "$RENDERED" "$WORK/kubectl.yaml" || fail "render: differs from kubectl kustomize"
    else
      fail "render: kubectl kustomize"
    fi
  else
    echo "   (no kubectl here: the concatenation alone)"
  fi
else
  fail "render"
fi
t_end render

# --- 3. schema -----------------------------------------------------------------------------
echo "== schema: kubernetes-validate --strict, Kubernetes $K8S_VERSION"
t_start
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$RENDERED"; then
  echo "   every object is valid"
else
  fail "schema (kubernetes-validate)"
fi
t_end schema

# --- 4. checkov ----------------------------------------------------------------------------
echo "== checkov --framework kubernetes -d $KUSTOMIZE_DIR"
t_start
if ! checks skips "$KUSTOMIZE_DIR"/*.yaml; then fail "checkov skip annotations"; fi
if "$VENV/bin/checkov" --framework kubernetes -d "$KUSTOMIZE_DIR" --compact --quiet \
    --skip-download --output cli >"$WORK/checkov.txt" 2>&1; then
  grep -E 'Passed checks|Failed checks' "$WORK/checkov.txt" | sed 's/^/   /'
else
  cat "$WORK/checkov.txt" >&2
  fail "checkov"
fi
t_end checkov

# --- 5. security settings ------------------------------------------------------------------
echo "== security settings of the rendered manifests"
t_start
checks security "$RENDERED" with-namespace || fail "security settings"
t_end security

# --- 6. chart ------------------------------------------------------------------------------
echo "== chart $CHART_DIR"
t_start
checks chart "$CHART_DIR" "$RENDERED" Cargo.toml || fail "chart (static checks)"
if command -v helm >/dev/null 2>&1; then
  echo "   helm found: lint and render"
  HELM_OUT="$WORK/helm.yaml"
  if helm lint --strict "$CHART_DIR" && helm template secureclaw "$CHART_DIR" -n secureclaw >"$HELM_OUT"; then
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$HELM_OUT" || fail "chart: schema"
    checks security "$HELM_OUT" without-namespace || fail "chart: security settings"
    mkdir -p "$WORK/helm-checkov" && cp "$HELM_OUT" "$WORK/helm-checkov/"
    "$VENV/bin/checkov" --framework kubernetes -d "$WORK/helm-checkov" --compact --quiet \
      --skip-download --output cli >"$WORK/checkov-helm.txt" 2>&1 \
      || { cat "$WORK/checkov-helm.txt" >&2; fail "chart: checkov"; }
  else
    fail "chart: helm lint/template"
  fi
else
  echo "   no helm here: templates not rendered (see docs/kubernetes.md)"
fi
t_end chart

awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "== total %.1f s\n", b - a }'
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "validate-manifests.sh: ${#FAILED[@]} step(s) failed: ${FAILED[*]}" >&2
  exit 1
fi
echo "validate-manifests.sh: all checks passed"
