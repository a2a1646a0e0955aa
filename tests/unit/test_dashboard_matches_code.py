"""The dashboard and alarms in template.yaml plot only metrics the code emits (issue 6, point 3).

Three sources must agree on every GenesysRelay metric: the metrics table in docs/architecture.md
(names and dimensions), the dashboard body and alarms in template.yaml, and the code under
layers/core/relay (the name as a string literal, and the dimensions in the EMF the emitters print).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.emf import in_lambda

from relay.local.template import PhysicalResource, Template, load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(os.environ.get("RELAY_TEMPLATE_UNDER_TEST", ROOT / "template.yaml"))
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "layers" / "core" / "relay"
NAMESPACE = "GenesysRelay"
# Which module holds each emitter named in the table's "emitted by" column.
EMITTER_MODULES = {
    "intake": ("logic/intake/fan_out.py", "logic/intake/service.py", "logic/intake/metrics.py"),
    "dispatcher": ("logic/dispatch/metrics.py",),
    "config sync": ("logic/config_sync/run.py",),
}


@dataclass(frozen=True)
class Plotted:
    namespace: str
    name: str
    dimensions: frozenset[str]
    # dimension values the dashboard or alarm pins (e.g. service="relay")
    pinned: tuple[tuple[str, str], ...]
    where: str


@dataclass(frozen=True)
class Contract:
    # The metric's dimension sets, ";" apart in the table: the first on every data point, the others
    # only in Lambda (a crash metric's release, ``function`` and ``version``: nothing names it elsewhere).
    dimensions: tuple[frozenset[str], ...]
    emitted_by: str

    def sets(self, *, in_lambda: bool) -> frozenset[frozenset[str]]:
        return frozenset(self.dimensions if in_lambda else self.dimensions[:1])


def metrics_table() -> dict[str, Contract]:
    """docs/architecture.md's metrics table: {metric name: (dimension sets, emitter)}."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table: dict[str, Contract] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Za-z]+)`", cells[0])
        dimensions = tuple(frozenset(re.findall(r"`([A-Za-z]+)`", part)) for part in cells[2].split(";"))
        for name in names:
            table[name] = Contract(dimensions, cells[3])
    return table


def with_sam_generated_resources(template: Template) -> Template:
    """Stand-ins for resources the SAM transform creates (e.g. the rule IntakeFunctionGenesysEventBridge),
    which the template may name but does not declare."""
    text = json.dumps(template.document)
    attributes: dict[str, dict[str, str]] = {}
    for logical_id, attribute in re.findall(r'"Fn::GetAtt": \["(\w+)", "(\w+)"\]', text):
        if logical_id not in template.resources:
            attributes.setdefault(logical_id, {})[attribute] = f"<sam-generated:{logical_id}.{attribute}>"
    for logical_id, values in attributes.items():
        template.physical[logical_id] = PhysicalResource(f"<sam-generated:{logical_id}>", values)
    return template


TABLE = metrics_table()
BASE = with_sam_generated_resources(load_template(TEMPLATE))


def dashboard(template: Template) -> dict[str, Any]:
    (logical_id,) = template.resources_of_type("AWS::CloudWatch::Dashboard")
    body: str = template.resolve(template.properties(logical_id))["DashboardBody"]
    document: dict[str, Any] = json.loads(body)
    return document


_SEARCH = re.compile(r"SEARCH\(\s*'\{([^}]*)\}([^']*)'")
_TERM = re.compile(r'(\w+)\s*=\s*("[^"]*"|\([^)]*\)|[^\s)]+)')


def _search_metrics(expression: str, where: str) -> Iterator[Plotted]:
    for schema, query in _SEARCH.findall(expression):
        namespace, *dimensions = [part.strip().strip('"') for part in schema.split(",")]
        names: list[str] = []
        pinned: list[tuple[str, str]] = []
        for key, value in _TERM.findall(query):
            values = re.findall(r'"([^"]*)"', value) or [value]
            if key == "MetricName":
                names.extend(values)
            else:
                assert key in dimensions, f"{where}: filters on {key}, outside the schema {dimensions}"
                pinned.extend((key, v) for v in values)
        assert names, f"{where}: a SEARCH without MetricName= matches more than the contract: {expression}"
        for name in names:
            yield Plotted(namespace, name, frozenset(dimensions), tuple(pinned), where)


def dashboard_metrics(template: Template) -> list[Plotted]:
    plotted: list[Plotted] = []
    for index, widget in enumerate(dashboard(template)["widgets"]):
        if widget["type"] != "metric":
            continue
        where = f"dashboard widget {index} ({widget['properties'].get('title')})"
        for entry in widget["properties"]["metrics"]:
            if isinstance(entry[0], dict):
                plotted.extend(_search_metrics(entry[0].get("expression", ""), where))
                continue
            fields = [f for f in entry if not isinstance(f, dict)]
            # "." / "..." repeat the previous row's fields: they would hide a metric from this check.
            assert "." not in fields and "..." not in fields, f"{where}: spell every metric out"
            namespace, name, *pairs = fields
            pinned = tuple(zip(pairs[::2], pairs[1::2], strict=True))
            plotted.append(Plotted(namespace, name, frozenset(k for k, _ in pinned), pinned, where))
    return plotted


def alarm_metrics(template: Template) -> list[Plotted]:
    plotted: list[Plotted] = []
    for logical_id in template.resources_of_type("AWS::CloudWatch::Alarm"):
        props = template.resolve(template.properties(logical_id))
        stats = [props] if "MetricName" in props else []
        stats += [q["MetricStat"]["Metric"] for q in props.get("Metrics", []) if "MetricStat" in q]
        for q in props.get("Metrics", []):
            plotted.extend(_search_metrics(q.get("Expression", ""), f"alarm {logical_id}"))
        for stat in stats:
            pinned = tuple((d["Name"], d["Value"]) for d in stat.get("Dimensions", []))
            dims = frozenset(k for k, _ in pinned)
            plotted.append(
                Plotted(stat["Namespace"], stat["MetricName"], dims, pinned, f"alarm {logical_id}")
            )
    return plotted


def relay_metrics() -> list[Plotted]:
    everything = dashboard_metrics(BASE) + alarm_metrics(BASE)
    return [p for p in everything if p.namespace == NAMESPACE]


def function_environment() -> dict[str, str]:
    return BASE.function("DispatcherFunction").environment


# --- the dashboard and alarms against the contract -------------------------------------------------


def test_the_contract_table_is_read() -> None:
    # Guards the parser: an empty table would make every check below pass vacuously.
    assert TABLE["Delivered"] == Contract((frozenset({"service", "target"}),), "dispatcher")
    assert TABLE["EventsRejected"].dimensions == ({"service", "reason"},)
    assert TABLE["DeliveryCrashed"].dimensions == ({"service"}, {"service", "function", "version"})
    assert {"BreakerOpened", "BreakerHalfOpened", "BreakerClosed"} <= set(TABLE)


def test_every_relay_metric_on_the_dashboard_and_alarms_is_in_the_contract() -> None:
    plotted = relay_metrics()
    assert plotted, "the dashboard plots no GenesysRelay metric at all"
    for metric in plotted:
        assert metric.name in TABLE, f"{metric.where}: {metric.name} is not in docs/architecture.md"
        assert metric.dimensions in TABLE[metric.name].dimensions, (
            f"{metric.where}: {metric.name} plotted with {sorted(metric.dimensions)}, "
            f"emitted with {[sorted(d) for d in TABLE[metric.name].dimensions]}"
        )


def test_pinned_service_and_namespace_are_what_the_functions_emit() -> None:
    from relay.observability import metrics

    environment = function_environment()
    assert environment["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE == metrics.namespace
    # The service is the stack's name: two stacks in one account never share a metric or an alarm.
    assert environment["POWERTOOLS_SERVICE_NAME"] == BASE.pseudo["AWS::StackName"]
    for metric in relay_metrics():
        for key, value in metric.pinned:
            assert key != "service" or value == environment["POWERTOOLS_SERVICE_NAME"], (
                f"{metric.where}: {metric.name} pinned to service={value!r}"
            )


def test_both_metric_emitters_take_their_service_from_the_functions_environment() -> None:
    # The intake's metrics (relay.observability) and the dispatcher's (Settings.service_name) carry the
    # service the template sets, the dimension the alarms and the dashboard pin.
    script = (
        "from relay.observability import logger, metrics; from relay.settings import get_settings; "
        "print(metrics.service, logger.service, get_settings().service_name)"
    )
    environment = {**os.environ, "POWERTOOLS_SERVICE_NAME": "relay-dev-stack"}
    shown = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True)
    assert shown.stdout.split() == ["relay-dev-stack"] * 3, shown.stderr


def test_no_other_namespace_is_invented() -> None:
    # Anything not ours must be an AWS namespace (AWS/SQS, AWS/Lambda, AWS/ApiGateway, ...).
    for metric in dashboard_metrics(BASE) + alarm_metrics(BASE):
        assert metric.namespace == NAMESPACE or metric.namespace.startswith("AWS/"), metric


def test_dashboard_has_the_widgets_operators_need() -> None:
    plotted = {(p.namespace, p.name) for p in dashboard_metrics(BASE)}
    required = {
        (NAMESPACE, "EventsAccepted"),
        (NAMESPACE, "Delivered"),
        (NAMESPACE, "DeliveryFailed"),
        (NAMESPACE, "DeliveryLatency"),
        (NAMESPACE, "Retried"),
        (NAMESPACE, "Deferred"),
        (NAMESPACE, "DeadLettered"),
        (NAMESPACE, "BreakerOpened"),
        (NAMESPACE, "BreakerHalfOpened"),
        (NAMESPACE, "BreakerClosed"),
        (NAMESPACE, "Throttled"),
        (NAMESPACE, "RateLimited"),
        (NAMESPACE, "TasksFiltered"),
        (NAMESPACE, "EventsUnmatched"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    }
    assert required <= plotted, f"missing: {sorted(required - plotted)}"
    expressions = json.dumps(dashboard(BASE))
    assert "'p50'" in expressions and "'p99'" in expressions, "latency needs p50 and p99"
    # success rate: Delivered / (Delivered + DeliveryFailed) as metric math
    assert re.search(r"\w+ / \(\w+ \+ \w+\)", expressions), "no success-rate expression"


@pytest.mark.parametrize(
    "function", ["DispatcherFunction", "SlowDispatcherFunction", "OrderedDispatcherFunction"]
)
def test_every_dispatcher_lane_shows_its_invocations_errors_throttles_and_concurrency(function: str) -> None:
    # Each lane has a throttles alarm, and docs/operations-template.md ("Dashboard") promises each
    # lane's invocations, errors, throttles and concurrency: the slow lane's throttles were missing.
    name = BASE.ref(function)
    plotted = {
        p.name
        for p in dashboard_metrics(BASE)
        if p.namespace == "AWS/Lambda" and ("FunctionName", name) in p.pinned
    }
    assert {"Invocations", "Errors", "Throttles", "ConcurrentExecutions"} <= plotted, function


def _queues_by_metric(plotted: list[Plotted]) -> dict[str, set[str]]:
    by_metric: dict[str, set[str]] = {}
    for metric in plotted:
        for key, value in metric.pinned:
            if key == "QueueName":
                by_metric.setdefault(metric.name, set()).add(value)
    return by_metric


@pytest.mark.parametrize("source", [dashboard_metrics, alarm_metrics], ids=["dashboard", "alarms"])
def test_queue_age_and_dlq_depth_watch_the_template_queues(source: Any) -> None:
    by_metric = _queues_by_metric(source(BASE))
    assert BASE.get_att("DeliveryQueue", "QueueName") in by_metric["ApproximateAgeOfOldestMessage"]
    assert BASE.get_att("DeadLetterQueue", "QueueName") in by_metric["ApproximateNumberOfMessagesVisible"]


def test_the_eventbridge_failure_alarms_watch_the_templates_own_queues() -> None:
    watched = _queues_by_metric(alarm_metrics(BASE))["ApproximateNumberOfMessagesVisible"]
    for queue in ("IntakeFailureQueue", "EventBridgeDeadLetterQueue"):
        assert BASE.get_att(queue, "QueueName") in watched, queue


def test_required_alarms_exist() -> None:
    alarms = {(p.namespace, p.name, tuple(sorted(k for k, _ in p.pinned))) for p in alarm_metrics(BASE)}
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible", ("QueueName",)) in alarms
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage", ("QueueName",)) in alarms
    assert ("AWS/Lambda", "Errors", ("FunctionName",)) in alarms
    # the version the live alias runs (the rollback triggers of a deploy)
    assert ("AWS/Lambda", "Errors", ("ExecutedVersion", "FunctionName", "Resource")) in alarms
    assert ("AWS/Lambda", "Throttles", ("FunctionName",)) in alarms
    assert ("AWS/ApiGateway", "5xx", ("ApiId", "Stage")) in alarms
    assert (NAMESPACE, "EventsRejected", ("reason", "service")) in alarms


def test_the_alarm_widget_shows_every_alarm() -> None:
    (widget,) = [w for w in dashboard(BASE)["widgets"] if w["type"] == "alarm"]
    shown = widget["properties"]["alarms"]
    alarms = BASE.resources_of_type("AWS::CloudWatch::Alarm")
    assert sorted(shown) == sorted(BASE.get_att(logical_id, "Arn") for logical_id in alarms)


def test_the_operators_alarm_table_explains_every_alarm() -> None:
    # On-call is paged by name: each alarm needs a row in docs/operations-template.md saying what
    # fired and where to look first (the ordered lane's six once had none).
    text = (ROOT / "docs" / "operations-template.md").read_text()
    section = text.split("## Alarms", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in section.splitlines()
        if row.startswith("| `<stack>-")
        for name in re.findall(r"`<stack>-([a-z0-9-]+)`", row.split("|")[1])
    }
    names = {
        BASE.properties(logical_id)["AlarmName"]["Fn::Sub"].removeprefix("${AWS::StackName}-")
        for logical_id in BASE.resources_of_type("AWS::CloudWatch::Alarm")
    }
    assert documented == names
    widget_count = re.search(r"alarm status of every alarm \((\d+)", text)
    assert widget_count is not None and int(widget_count[1]) == len(names)


def test_dashboard_widgets_fit_the_grid_without_overlapping() -> None:
    # CloudWatch moves an overlapping widget elsewhere silently: a row two changes both added at the
    # same y would leave the dashboard in an order nobody chose.
    cells: dict[tuple[int, int], str] = {}
    for widget in dashboard(BASE)["widgets"]:
        title = widget["properties"].get("title", widget["type"])
        x, y, width, height = (int(widget[key]) for key in ("x", "y", "width", "height"))
        assert 0 <= x and x + width <= 24, f"{title}: outside the 24-column grid"
        for cell in ((col, row) for col in range(x, x + width) for row in range(y, y + height)):
            assert cell not in cells, f"{title} overlaps {cells[cell]} at column {cell[0]}, row {cell[1]}"
            cells[cell] = title


# --- the contract against the code ----------------------------------------------------------------------


@pytest.mark.parametrize("emitted_by", sorted(EMITTER_MODULES))
def test_each_emitter_module_exists_and_emits_metrics(emitted_by: str) -> None:
    # A renamed or emptied module fails here instead of quietly leaving its metrics unchecked
    paths = [PACKAGE / p for p in EMITTER_MODULES[emitted_by]]
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.is_file()]
    assert not missing, f"{emitted_by}: {missing} moved? update EMITTER_MODULES"
    source = "\n".join(p.read_text() for p in paths)
    assert re.search(r"add_metric|single_metric|\.count\(", source), f"{emitted_by} emits no metric"


def test_every_emitter_in_the_metrics_table_has_its_modules() -> None:
    assert {contract.emitted_by for contract in TABLE.values()} <= set(EMITTER_MODULES)


@pytest.mark.parametrize("name", sorted({p.name for p in relay_metrics()}))
def test_each_plotted_metric_name_occurs_in_the_code(name: str) -> None:
    emitted_by = TABLE[name].emitted_by
    code = "\n".join(
        path.read_text()
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in {"local", "cli"}  # developer side, not emitters
    )
    assert f'"{name}"' in code or f"'{name}'" in code, f"{name} ({emitted_by}) is emitted nowhere"


def _emf_lines(text: str) -> list[dict[str, Any]]:
    blobs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blobs.append(json.loads(line))
    return blobs


def _emitted(blobs: list[dict[str, Any]]) -> dict[str, frozenset[frozenset[str]]]:
    """{metric name: its dimension sets} from EMF blobs (each blob's dimension sets apply to each of
    its metrics)."""
    found: dict[str, frozenset[frozenset[str]]] = {}
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == NAMESPACE
            dimension_sets = frozenset(frozenset(dimensions) for dimensions in directive["Dimensions"])
            for metric in directive["Metrics"]:
                found[metric["Name"]] = found.get(metric["Name"], frozenset()) | dimension_sets
    return found


# Outside Lambda (tests, the local stack, tools) and in it, where the crash metrics name the release.
IN_OR_OUT_OF_LAMBDA = pytest.mark.parametrize(
    "function_name", [None, "relay-prod-DispatcherFunction-x1"], ids=["local", "lambda"]
)


@IN_OR_OUT_OF_LAMBDA
def test_dispatcher_emits_its_metrics_with_the_contract_dimensions(
    capsys: pytest.CaptureFixture[str], function_name: str | None
) -> None:
    from relay.logic.dispatch.metrics import SERVICE_METRICS, BatchMetrics, Metric
    from relay.settings import load_settings

    # Given a batch that touched every dispatcher metric, in the function's environment (as the engine
    # builds it)
    settings = load_settings({**function_environment(), **in_lambda(function_name)})
    batch = BatchMetrics(
        namespace=settings.metrics_namespace,
        service=settings.service_name,
        release=settings.release_dimensions(),
    )
    for metric in Metric:
        if metric in SERVICE_METRICS:
            batch.service_count(metric)
        elif metric is not Metric.DELIVERY_LATENCY:
            batch.count(metric, "crm-plain")
    batch.latency("crm-plain", 12.5)

    # When it flushes
    batch.flush()

    # Then every metric the dashboard plots from the dispatcher carries the contract's dimensions
    emitted = _emitted(_emf_lines(capsys.readouterr().out))
    for metric in relay_metrics():
        if TABLE[metric.name].emitted_by == "dispatcher":
            expected = TABLE[metric.name].sets(in_lambda=function_name is not None)
            assert emitted.get(metric.name) == expected, metric.name


@IN_OR_OUT_OF_LAMBDA
def test_intake_emits_its_metrics_with_the_contract_dimensions(
    capsys: pytest.CaptureFixture[str], function_name: str | None
) -> None:
    from relay.logic.intake import PowertoolsMetrics
    from relay.logic.intake.metrics import RELEASE_METRICS
    from relay.observability import metrics
    from relay.settings import load_settings

    # Given the intake's metrics, one invocation each (a rejection is its invocation's only metric),
    # recorded as relay.wiring.intake builds the recorder
    settings = load_settings({**BASE.function("IntakeFunction").environment, **in_lambda(function_name)})
    recorder = PowertoolsMetrics(settings.release_dimensions())
    blobs: list[dict[str, Any]] = []
    counted: list[tuple[str, str | None, str | None]] = [
        ("EventsAccepted", None, None),
        ("EventsDuplicate", None, None),
        ("TasksQueued", None, None),
        ("EventsUnmatched", None, None),
        ("TasksUnordered", None, None),
        ("InternalErrors", None, None),
        ("EventsRejected", "bad-signature", None),
        ("TasksFiltered", "type", "crm-plain"),
    ]
    for name, reason, target in counted:
        recorder.count(name, reason=reason, target=target)
        if target is None and name not in RELEASE_METRICS:  # a per-target count or a crash is written at once
            # When the invocation ends (log_metrics flushes the shared Metrics)
            metrics.flush_metrics()
        blobs += _emf_lines(capsys.readouterr().out)

    # Then each carries the contract's dimensions
    emitted = _emitted(blobs)
    for name, _, _ in counted:
        assert emitted.get(name) == TABLE[name].sets(in_lambda=function_name is not None), name
