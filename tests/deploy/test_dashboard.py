"""deploy/grafana/asl-serve.json against the live server: every PromQL expression (panels and
template variables) parses, names only metrics that a real asl-server on the default model exports
on /metrics, and uses only labels those metrics carry (or that Prometheus adds at scrape time)."""
import importlib.util
import json
import re
from pathlib import Path

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "asl-serve.json"
# Labels Prometheus attaches to every scraped series (and the ServiceMonitor's Kubernetes ones).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def _server_conftest():
    spec = importlib.util.spec_from_file_location("asl_server_conftest", ROOT / "tests" / "server" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def substitute(expr):
    """Grafana's variables -> values PromQL parses: intervals -> durations, others -> '.*'."""
    def repl(m):
        name = m.group(1) or m.group(2)
        return GRAFANA_VARS.get(name, ".*")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def dashboard_queries():
    dash = json.loads(DASHBOARD.read_text())
    queries = []
    def visit(panels):
        for p in panels:
            for t in p.get("targets", []):
                queries.append((f"panel '{p['title']}' {t['refId']}", t["expr"]))
            visit(p.get("panels", []))
    visit(dash["panels"])
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        assert m, f"variable {v['name']}: expected label_values(selector, label), got {q}"
        queries.append((f"variable ${v['name']}", m.group(1)))
        queries.append((f"variable ${v['name']} label", f"count by ({m.group(2)}) ({m.group(1)})"))
    return dash, queries


def references(expr):
    """(metric names, label names) a PromQL expression uses."""
    metrics, labels = set(), set()
    def pre(node):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    name = m.value
                else:
                    labels.add(m.name)
            assert name, f"selector without a metric name in {expr}"
            metrics.add(name)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = getattr(node.modifier, "matching", None)
            if matching is not None:
                labels.update(matching.labels)
    promql_parser.walk(promql_parser.parse(expr), pre_visit=pre)
    return metrics, labels


def test_every_expression_parses_and_covers_the_brief():
    dash, queries = dashboard_queries()
    assert len(queries) >= 30
    used = set()
    for where, expr in queries:
        try:
            m, _ = references(substitute(expr))
        except ValueError as e:
            pytest.fail(f"{where}: PromQL does not parse: {e}\n{expr}")
        used |= m
    # What the dashboard must show (issue 16 item 4, and the prefix cache of issue 15).
    for metric in ["asl_time_to_first_token_seconds_bucket", "asl_time_per_output_token_seconds_bucket",
                   "asl_e2e_request_latency_seconds_bucket", "asl_generation_tokens_total", "asl_requests_total",
                   "asl_requests_waiting", "asl_kv_cache_usage_ratio", "asl_selection_layer_bucket",
                   "asl_kv_kept_ratio_bucket", "asl_pruned_prompt_tokens_total", "asl_preemptions_total",
                   "asl_prefix_cache_hits_total", "asl_prefix_cache_queries_total", "asl_kv_blocks_cached",
                   "asl_prefix_cache_evictions_total"]:
        assert metric in used, f"the dashboard does not show {metric}"
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert any("asl_selection_layer_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"]), "selection-layer heatmap"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "model", "policy"} <= names


@pytest.fixture(scope="module")
def scrape(tmp_path_factory):
    conftest = _server_conftest()
    server = conftest.start_server(tmp_path_factory.mktemp("dashboard"))
    try:
        text = server.metrics_text()
    finally:
        rc = server.stop()
    assert rc == 0, f"asl-server exited with {rc}:\n{server.log()}"
    labels = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels.setdefault(s.name, set()).update(s.labels)
    return labels


def test_every_metric_and_label_is_exported(scrape):
    _, queries = dashboard_queries()
    problems = []
    for where, expr in queries:
        metrics, labels = references(substitute(expr))
        for m in sorted(metrics):
            if m not in scrape:
                problems.append(f"{where}: {m} is not exported")
        present = [m for m in metrics if m in scrape]
        for label in sorted(labels - TARGET_LABELS):
            if present and not any(label in scrape[m] for m in present):
                problems.append(f"{where}: label {label} is on none of {sorted(present)}")
    assert not problems, "\n".join(problems)
