"""The Prometheus alert rules and the Grafana dashboard stay valid and in step with the code.

- promtool: `check rules` on deploy/prometheus/alerts.yml, its unit tests (`test rules
  alerts_test.yml`: each alert fires on a bad series and stays silent on a healthy one),
  `check config` on the example prometheus.yml, and the dashboard's queries parsed as rules.
  Without promtool the test skips, except under CI=true where it fails (scripts/ensure-services
  installs it).
- Every metric an alert or a panel queries is one the workers or the monitor export: listed
  in METRICS below and spelled as a string in common/observability/metrics.py, so renaming a
  metric there breaks this test instead of silently blinding an alert.
- Every periodic job (common.schedules) has its "missed" alert, over its period, and every
  worker service its "absent" alert: adding a job or a service without one fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.routing import SERVICES
from common.schedules import PERIODIC_JOBS, Schedule

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "jobs-dashboard.json"

# What the workers (job "workers") and the monitor (Flower's /metrics, job "monitor") export.
METRICS = {
    "celery_task_received_total": "counter",
    "celery_task_succeeded_total": "counter",
    "celery_task_failed_total": "counter",
    "celery_task_retried_total": "counter",
    "celery_task_rejected_total": "counter",
    "celery_task_runtime_seconds": "histogram",
    "celery_task_last_success_timestamp_seconds": "gauge",
    "celery_queue_length": "gauge",
    "celery_queue_oldest_age_seconds": "gauge",
    "celery_queue_consumers": "gauge",
    "celery_queue_paused": "gauge",
    "celery_queue_paused_seconds": "gauge",
    "celery_dead_letters": "gauge",
    "celery_dead_lettered_total": "counter",
    "celery_delayed_tasks": "gauge",
    "celery_broker_up": "gauge",
    "celery_redelivered_total": "counter",
    "celery_worker_info": "gauge",
}
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

DAY = 86_400


# --- promtool ---------------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def promtool(*args: str | Path) -> str:
    """Run promtool; fail with its output if it exits non-zero. Skips without it, except in CI."""
    binary = shutil.which("promtool")
    if binary is None:
        if in_ci():
            pytest.fail("promtool is not installed, and CI=true: scripts/ensure-services installs it")
        pytest.skip("promtool is not installed (scripts/ensure-services installs it; CI=true fails instead)")
    done = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} exited {done.returncode}:\n{output}"
    return output


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", ALERTS)


def test_every_alert_fires_on_a_bad_series_and_stays_silent_on_a_healthy_one() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST)


def test_the_example_prometheus_config_is_valid_and_loads_the_rules() -> None:
    assert yaml.safe_load(CONFIG.read_text())["rule_files"] == ["alerts.yml"]
    promtool("check", "config", CONFIG)


def test_the_dashboards_queries_parse(tmp_path: Path) -> None:
    # Grafana's variables replaced by what they stand for, each query a recording rule.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path)


# --- the metric names -------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    keywords |= {"offset", "bool", "inf", "nan", "atan2"}
    names = set()
    # Numbers and durations (0.95, 1e3, 5m) are one token, so their letters are never names.
    for token in re.finditer(r"\$\{?\w+\}?|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*|[a-zA-Z_:][\w:]*", expr):
        word = token.group()
        if word[0] in "$0123456789" or word.lower() in keywords:
            continue
        if expr[token.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        names.add(word)
    return names


def test_metric_names_are_found_in_a_query() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (task, le) (rate("
        'celery_task_runtime_seconds_bucket{service=~"$service"}[$__rate_interval])))'
        " / on (task) group_left sum without (le) (up offset 5m) > bool 1e3"
        ' or absent(celery_broker_up{job="monitor"} == 1)'
    )
    assert metric_names(expr) == {"celery_task_runtime_seconds_bucket", "up", "celery_broker_up"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))  # inside collapsed rows
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$service", ".*")


def metrics_source() -> str:
    spec = importlib.util.find_spec("common.observability.metrics")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).read_text()


def known(name: str) -> str | None:
    """The exported metric `name` is a series of (a histogram's `_bucket` is its histogram's)."""
    if name in METRICS:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and METRICS.get(base) == "histogram":
            return base
    return None


@pytest.mark.parametrize("where", ["alerts.yml", "jobs-dashboard.json"])
def test_every_metric_queried_is_exported_by_the_code(where: str) -> None:
    if where == "alerts.yml":
        queries = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    else:
        queries = dashboard_queries()
    source = metrics_source()
    used = set()
    for what, expr in queries:
        names = metric_names(expr)
        assert names, f"{what}: no metric found in {expr!r}"
        for name in names - PROMETHEUS_SERIES:
            metric = known(name)
            if metric is None:
                pytest.fail(f"{where}, {what}: {name} is no metric the workers or the monitor export")
            if not re.search(rf"[\"']{metric}[\"']", source):
                pytest.fail(f"{where}, {what}: {metric} is not named in common/observability/metrics.py")
            used.add(metric)
    assert used, where


# --- alerts -----------------------------------------------------------------------------------


def test_every_alert_says_what_it_is_and_what_to_do() -> None:
    for rule in alert_rules():
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{rule['alert']}: no {key} annotation"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]


def period_seconds(schedule: Schedule) -> int:
    """How often `schedule` runs; fails for a crontab shape this test does not know yet."""
    if schedule.every_seconds is not None:
        return schedule.every_seconds
    cron = dict(schedule.crontab or {})
    fixed = {field for field, value in cron.items() if value.isdigit()}
    shapes = {
        frozenset({"minute"}): 3600,
        frozenset({"minute", "hour"}): DAY,
        frozenset({"minute", "hour", "day_of_week"}): 7 * DAY,
    }
    if fixed != set(cron) or frozenset(fixed) not in shapes:
        pytest.fail(f"{schedule.name}: teach period_seconds() the period of crontab {cron}")
    return shapes[frozenset(fixed)]


def test_every_periodic_job_has_a_missed_alert_over_its_period() -> None:
    missed = [rule for rule in alert_rules() if rule["alert"] == "CeleryPeriodicJobMissed"]
    by_job = {rule["labels"].get("periodic_job"): rule for rule in missed}
    assert len(by_job) == len(missed), "one CeleryPeriodicJobMissed rule per periodic job"
    jobs = {s.name for s in PERIODIC_JOBS}
    assert set(by_job) == jobs, "one CeleryPeriodicJobMissed rule per job of common.schedules, none other"
    for schedule in PERIODIC_JOBS:
        expr = by_job[schedule.name]["expr"]
        selectors = re.findall(r"celery_task_last_success_timestamp_seconds\{([^}]*)\}", expr)
        assert selectors and all(s == f'task="{schedule.task}"' for s in selectors), (schedule.name, expr)
        windows = {int(w) for w in re.findall(r"\[(\d+)s\]", expr)}
        thresholds = {int(t) for t in re.findall(r">\s*(\d+)", expr)}
        assert len(windows) == 1 and windows == thresholds, f"{schedule.name}: one window, the threshold"
        period = period_seconds(schedule)
        threshold = thresholds.pop()
        if not 1.5 * period <= threshold <= 1.5 * period + 3600:
            pytest.fail(f"{schedule.name}: {threshold} s, not its period ({period} s) x 1.5 plus a margin")
        assert "absent_over_time(" in expr, f"{schedule.name}: no success at all in the window must fire too"


def test_every_worker_service_has_an_absent_alert() -> None:
    absent = {
        rule["labels"]["service"]: rule["expr"]
        for rule in alert_rules()
        if rule["alert"] == "CeleryWorkersAbsent"
    }
    assert set(absent) == set(SERVICES)
    for service, expr in absent.items():
        assert f'absent(up{{job="workers", service="{service}"}} == 1)' == expr.strip(), service


# --- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_is_templated_on_datasource_and_service() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    assert variables["service"]["datasource"]["uid"] == "${datasource}"
    ids = [panel["id"] for panel in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_shows_what_operators_look_at() -> None:
    exprs = "\n".join(expr for _, expr in dashboard_queries())
    for needed in (
        "celery_queue_length",
        "celery_queue_oldest_age_seconds",
        "celery_queue_consumers",
        "celery_task_succeeded_total",
        "celery_task_failed_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "celery_task_retried_total",
        "celery_dead_letters",
        "celery_dead_lettered_total",
        "celery_delayed_tasks",
        "celery_redelivered_total",
        "celery_worker_info",
    ):
        assert needed in exprs, f"the dashboard has no panel with {needed}"
    # Several scrapes report each queue: a sum would count it once per worker.
    queue_gauges = {"celery_queue_length", "celery_queue_oldest_age_seconds", "celery_queue_consumers"}
    for _, expr in dashboard_queries():
        if metric_names(expr) & queue_gauges:
            assert "max by (queue)" in expr and not re.search(r"\bsum\b", expr), expr
