"""The chart's Grafana dashboards and alert rules: the dashboards are well-formed Grafana JSON
shipped in a ConfigMap with the sidecar's label, the PrometheusRule has the structure the
Prometheus Operator accepts and the alerts operators rely on, every PromQL expression parses
(`promql-parser`, the Rust parser Prometheus-compatible tools use), and every metric the
expressions name is exposed by `/metrics` of a running node."""

import json
import re

import promql_parser
import pytest
import requests
import yaml

from test_chart import CHART, by_kind, helm, render, validate
from test_cluster import Cluster

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Series Prometheus makes itself, not the node.
SYNTHETIC = {"up"}
ALERTS = {
    "CairnNodeDown", "CairnMembersDead", "CairnPoolShrinking", "CairnHitRatioCollapse", "CairnOriginErrors",
    "CairnDirtyBytesNearCap", "CairnOldestPendingUploadTooOld", "CairnKvEvictionsUnderPressure",
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def grafana_to_promql(expr):
    """A panel's query with Grafana's variables replaced by values Prometheus would see."""
    return (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            .replace("$namespace", ".*").replace("$pod", ".*"))


def metric_names(expr):
    names = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.append(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_exprs():
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((f"{path.name}: {p['title']}", grafana_to_promql(t["expr"])))
    return out


def rendered_rules():
    docs = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboards.enabled=true")
    (rule,) = by_kind(docs, "PrometheusRule")
    return docs, rule


def rule_exprs():
    _, rule = rendered_rules()
    return [(r["alert"], r["expr"]) for g in rule["spec"]["groups"] for r in g["rules"]]


def test_dashboards_are_grafana_json_with_unique_ids_and_queries():
    assert [p.name for p in DASHBOARDS] == ["cairn-overview.json"]
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] == "cairn-overview" and d["title"] == "cairn"
        assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert {"namespace", "pod"} <= set(variables)
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        graphs = [p for p in d["panels"] if p["type"] != "row"]
        assert len(graphs) >= 20
        for p in graphs:
            assert p["type"] == "timeseries", p["title"]
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
            assert p["targets"], f"{p['title']} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
            for t in p["targets"]:
                # Every query is scoped to the chosen namespace and pods.
                assert 'namespace=~"$namespace"' in t["expr"] and 'pod=~"$pod"' in t["expr"], t["expr"]
        titles = {p["title"] for p in graphs}
        for needed in ("Chunk hit ratio", "Members by gossip state (max over nodes' views)", "Oldest pending upload",
                       "Dirty bytes against the cap", "KV evictions by tier", "Latency p99 by operation"):
            assert needed in titles


def test_dashboards_configmap_carries_the_sidecar_label_and_every_file():
    docs, _ = rendered_rules()
    cms = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    assert len(cms) == 1
    cm = cms[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == [p.name for p in DASHBOARDS]
    for p in DASHBOARDS:
        assert json.loads(cm["data"][p.name]) == json.loads(p.read_text())
    off = render()
    assert not [d for d in off if d["kind"] == "PrometheusRule"]
    assert not [d for d in off if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards")]


def test_chart_with_dashboards_and_rules_lints_and_validates(tmp_path):
    helm("lint", "--strict", str(CHART), "--set", "metrics.prometheusRule.enabled=true",
         "--set", "metrics.dashboards.enabled=true", "--set", "metrics.podMonitor.enabled=true")
    docs, _ = rendered_rules()
    # PrometheusRule is a Prometheus Operator CRD the schemas do not cover: checked below.
    validate([d for d in docs if d["kind"] not in ("PrometheusRule", "PodMonitor")], tmp_path, "monitoring")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    assert sum(len(v.encode()) for v in cm["data"].values()) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"


def test_prometheus_rule_structure_and_alerts():
    _, rule = rendered_rules()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "ml"
    groups = rule["spec"]["groups"]
    assert [g["name"] for g in groups] == ["cairn"]
    alerts = {}
    for g in groups:
        assert set(g) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        for r in g["rules"]:
            # The PrometheusRule CRD's Rule: exactly one of alert/record, expr, optional for/labels/annotations.
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, r
            assert isinstance(r["expr"], str) and r["expr"].strip()
            assert DURATION.match(r["for"]), r["for"]
            assert r["labels"]["severity"] in ("critical", "warning")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            assert all(isinstance(v, str) for v in r["annotations"].values())
            alerts[r["alert"]] = r
    assert set(alerts) == ALERTS
    assert alerts["CairnNodeDown"]["expr"] == 'up{job="ml/cairn"} == 0'
    assert "cairn_oldest_pending_upload_age_seconds" in alerts["CairnOldestPendingUploadTooOld"]["expr"]
    assert "> 1800" in alerts["CairnOldestPendingUploadTooOld"]["expr"]
    assert "cairn_dirty_limit_bytes" in alerts["CairnDirtyBytesNearCap"]["expr"]
    # Thresholds come from values.
    docs = render("--set", "metrics.prometheusRule.enabled=true", "--set",
                  "metrics.prometheusRule.oldestPendingSeconds=600", "--set", "metrics.prometheusRule.dirtyRatio=0.75")
    (r2,) = by_kind(docs, "PrometheusRule")
    by = {r["alert"]: r for r in r2["spec"]["groups"][0]["rules"]}
    assert by["CairnOldestPendingUploadTooOld"]["expr"].endswith("> 600")
    assert by["CairnDirtyBytesNearCap"]["expr"].endswith("> 0.75")


def test_every_expression_parses():
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) > 30
    for where, e in exprs:
        try:
            promql_parser.parse(e)
        except ValueError as err:
            pytest.fail(f"{where}: {e!r} does not parse: {err}")
    with pytest.raises(ValueError):
        promql_parser.parse("rate(cairn_uploads_total[5m)")  # the parser does refuse bad PromQL


def exposed(text):
    """Metric names in an exposition: each family's samples (histograms as _bucket/_sum/_count)."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_used_is_exposed_by_a_running_node(tmp_path):
    c = Cluster(tmp_path, 1, gossip=True)
    try:
        n = c.nodes[0]
        r = requests.get(f"http://{n.host}:{n.admin_port}/metrics", timeout=5)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        have = exposed(r.text)
    finally:
        c.stop()
    used = {}
    for where, e in dashboard_exprs() + rule_exprs():
        for name in metric_names(e):
            used.setdefault(name, where)
    assert len(used) > 25
    missing = {name: where for name, where in used.items() if name not in have and name not in SYNTHETIC}
    assert not missing, f"used but not exposed: {missing}"


def test_metric_names_follow_prometheus_conventions(tmp_path):
    c = Cluster(tmp_path, 1, gossip=True)
    try:
        n = c.nodes[0]
        n.s3().list_buckets()
        text = requests.get(f"http://{n.host}:{n.admin_port}/metrics", timeout=5).text
    finally:
        c.stop()
    types = dict(re.findall(r"# TYPE (\S+) (\S+)", text))
    assert len(types) > 60
    for name, kind in types.items():
        assert name.startswith("cairn_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        for bad in ("_ms", "_millis", "_kb", "_mb", "_kib", "_mib", "_microseconds"):
            assert not name.endswith(bad) and f"{bad}_" not in name, name
    # No label whose values grow with keys or objects: every label name is one of a known, bounded set.
    labels = set()
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        labels |= set(re.findall(r'([a-z_]+)="', line.split("{", 1)[1].rsplit("}", 1)[0]))
    assert labels <= {"tier", "op", "code", "kind", "role", "source", "result", "state", "listener", "reason",
                      "durability", "dir", "cmd", "le", "version", "fingerprint"}, labels
    assert types["cairn_request_duration_seconds"] == "histogram"
    buckets = re.findall(r'cairn_request_duration_seconds_bucket\{op="ListBuckets",le="([^"]+)"\}', text)
    assert buckets[0] == "0.0001" and buckets[-2:] == ["10", "+Inf"] and len(buckets) == 17
    for gauge in ("cairn_oldest_pending_upload_age_seconds", "cairn_dirty_limit_bytes", "cairn_dirty_bytes",
                  "cairn_cache_capacity_bytes", "cairn_kv_capacity_bytes"):
        assert types[gauge] == "gauge", gauge
    assert types["cairn_kv_evictions_total"] == "counter"
