"""The Helm chart: `helm lint`, `helm template` of the default values and of the AKS example,
every rendered manifest validated strictly against the Kubernetes API schemas of the versions AKS
supports, and what an operator depends on checked in the rendered objects (secrets never in a
ConfigMap, the config accepted by the real binary, probes, seeds, disruption bounds)."""

import base64
import os
import pathlib
import subprocess

import pytest
import yaml

from conftest import CAIRN_BIN, ROOT

CHART = ROOT / "deploy" / "helm" / "cairn"
AKS = CHART / "examples" / "aks-values.yaml"
HELM = os.environ.get("HELM", str(ROOT / ".test-deps" / "bin" / "helm"))
# Kubernetes minor versions AKS supports (standard and long-term support) as of this chart.
K8S_VERSIONS = ["1.32.0", "1.33.0", "1.34.0", "1.35.0"]


def helm(*args):
    if not pathlib.Path(HELM).exists():
        pytest.fail(f"helm not found at {HELM}: run `cargo xtask deps`")
    r = subprocess.run([HELM, *args], capture_output=True, text=True)
    assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def render(*extra):
    out = helm("template", "cairn", str(CHART), "--namespace", "ml", *extra)
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert found, f"no {kind} rendered"
    return found


def validate(docs, tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    for v in K8S_VERSIONS:
        r = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", "-k", v, str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0, f"{name} against Kubernetes {v}:\n{r.stdout}\n{r.stderr}"
        errors = [l for l in (r.stdout + r.stderr).splitlines() if "ERROR" in l or "failed" in l]
        assert not errors, errors


def test_lint_default_and_aks_example():
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "-f", str(AKS))


def test_rendered_manifests_are_valid_for_every_aks_version(tmp_path):
    validate(render(), tmp_path, "default")
    aks = render("-f", str(AKS))
    # The PodMonitor is a Prometheus Operator CRD the schemas do not cover: checked by hand below.
    validate([d for d in aks if d["kind"] != "PodMonitor"], tmp_path, "aks")
    (pm,) = by_kind(aks, "PodMonitor")
    (ds,) = by_kind(aks, "DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    ports = {p["name"] for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["admin"] and "admin" in ports
    assert pm["metadata"]["labels"]["release"] == "prometheus"


def cairn_config(docs):
    (cm,) = by_kind(docs, "ConfigMap")
    return cm["data"]["cairn.toml"]


def check_config_with_binary(toml_text, tmp_path, env_extra=None):
    """The rendered config is accepted by the real binary, with the Secret's variables set."""
    path = tmp_path / "cairn.toml"
    path.write_text(toml_text)
    env = dict(os.environ)
    env.update(
        CAIRN_CLUSTER_SECRET="s" * 32,
        CAIRN_ACCESS_KEY="ak",
        CAIRN_SECRET_KEY="sk",
        CAIRN_KV_PASSWORD="kvp",
        CAIRN_NODE_ID="aks-gpu-0",
        CAIRN_ADVERTISE="10.0.0.4:9100",
        **(env_extra or {}),
    )
    r = subprocess.run(
        [CAIRN_BIN, "serve", "--config", str(path), "--print-config"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, f"cairn rejected the chart's config:\n{r.stderr}\n---\n{toml_text}"
    import tomllib

    return tomllib.loads(r.stdout)


def test_config_is_accepted_by_the_node_and_holds_no_secret(tmp_path):
    for extra in ([], ["-f", str(AKS)]):
        docs = render(*extra)
        text = cairn_config(docs)
        eff = check_config_with_binary(text, tmp_path)
        # Credentials come from the Secret through the environment, never from the ConfigMap.
        for word in ("secret", "password", "requirepass", "access_key"):
            assert word not in text.lower(), f"{word!r} in the ConfigMap:\n{text}"
        assert eff["cluster"]["secret"] == "s" * 32
        assert eff["auth"]["keys"] == [{"access_key": "ak", "secret_key": "sk"}]
        assert eff["kv"]["requirepass"] == "kvp"
        assert eff["cluster"]["seeds"][0] == "cairn-seeds.ml.svc:9100"
        assert eff["cache"]["dir"] == "/var/lib/cairn"
        assert eff["kubernetes"]["zone_label"] == "topology.kubernetes.io/zone"
    aks = check_config_with_binary(cairn_config(render("-f", str(AKS))), tmp_path)
    assert aks["cluster"]["seeds"][1:] == [
        "cairn-seeds.cluster-b.internal.example.com:9100",
        "cairn-seeds.cluster-c.internal.example.com:9100",
    ]
    assert aks["kubernetes"]["rack_label"] == "example.com/rack"
    assert [o["url"] for o in aks["origin"]] == ["az://checkpoints", "az://datasets"]
    assert aks["origin"][0]["durability"] == "local" and aks["origin"][1]["metadata"] == "immutable"
    assert aks["origin"][0]["options"] == {"azure_storage_account_name": "mytrainingstorage"}
    assert aks["writeback"]["drain_timeout"] in ("1m 30s", "90s")
    # Peer mTLS from the mounted Secret; S3 and KV stay plain.
    assert aks["tls"]["peer"] is True and aks["tls"]["s3"] is False
    assert (aks["tls"]["cert"], aks["tls"]["key"], aks["tls"]["ca"]) == (
        "/etc/cairn/tls/tls.crt", "/etc/cairn/tls/tls.key", "/etc/cairn/tls/ca.crt")


def test_daemonset_what_an_operator_depends_on():
    docs = render("-f", str(AKS))
    (ds,) = by_kind(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    # Node id from the node name; secrets by reference to a Secret only.
    assert env["CAIRN_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["CAIRN_K8S_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for name, key in [
        ("CAIRN_CLUSTER_SECRET", "cluster-secret"),
        ("CAIRN_SECRET_KEY", "s3-secret-key"),
        ("CAIRN_KV_PASSWORD", "kv-password"),
    ]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "cairn-credentials", "key": key}
    assert not by_kind(docs, "ServiceAccount")[0].get("automountServiceAccountToken") is False
    # Probes with meaning: ready = joined and origins answer; live = the process answers.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Non-root, read-only root filesystem; the cache on the host's NVMe.
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsUser"] == 65532
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    cache = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert cache["hostPath"]["path"] == "/mnt/nvme/cairn"
    (init,) = spec["initContainers"]
    assert init["args"][:1] == ["prepare-dir"] and init["image"] == c["image"]
    # Grace long enough for the configured drain, plus the hand-over and the leave.
    assert spec["terminationGracePeriodSeconds"] >= 90 + 30
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"agentpool": "gpu"}
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "5%"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == "5%"
    assert pdb["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    # Workload identity: the pod label the webhook looks for, the client id on the account.
    assert ds["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    (sa,) = by_kind(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"] == "cairn"
    # The TLS Secret is a volume (re-read on rotation), mounted where the config points.
    tls = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "cairn-tls" and "subPath" not in str(c["volumeMounts"])
    assert {"name": "tls", "mountPath": "/etc/cairn/tls", "readOnly": True} in c["volumeMounts"]
    # An existing Secret: the chart creates none.
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_services_seeds_and_local_endpoint():
    docs = render()
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    seeds = services["cairn-seeds"]["spec"]
    # Headless, and listing pods before they are ready (a node is ready only once it has joined).
    assert seeds["clusterIP"] == "None" and seeds["publishNotReadyAddresses"] is True
    assert {(p["port"], p["protocol"]) for p in seeds["ports"]} == {(9100, "TCP"), (9100, "UDP")}
    local = services["cairn"]["spec"]
    assert local["internalTrafficPolicy"] == "Local"
    assert {p["name"]: p["port"] for p in local["ports"]} == {"s3": 9000, "kv": 6379}
    (ds,) = by_kind(docs, "DaemonSet")
    ports = {p["name"]: p for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["s3"]["hostPort"] == 9000 and ports["kv"]["hostPort"] == 6379
    assert "hostPort" not in ports["peer"] and "hostPort" not in ports["admin"]


def test_least_rbac():
    docs = render()
    (role,) = by_kind(docs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    off = render("--set", "rbac.create=false")
    assert not [d for d in off if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_generated_secret_is_complete_and_explicit_values_win():
    docs = render("--set", "secrets.clusterSecret=pool-secret-0123456789abcdef")
    (secret,) = by_kind(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"cluster-secret", "s3-access-key", "s3-secret-key", "kv-password"}
    assert data["cluster-secret"] == "pool-secret-0123456789abcdef"
    assert len(data["s3-secret-key"]) == 40 and len(data["kv-password"]) == 32
    (cm,) = by_kind(docs, "ConfigMap")
    assert "pool-secret" not in cm["data"]["cairn.toml"]


def test_kv_can_be_turned_off(tmp_path):
    docs = render("--set", "kv.enabled=false")
    eff = check_config_with_binary(cairn_config(docs), tmp_path)
    assert eff["kv"]["listen"] == ""
    (ds,) = by_kind(docs, "DaemonSet")
    assert "kv" not in {p["name"] for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]}
