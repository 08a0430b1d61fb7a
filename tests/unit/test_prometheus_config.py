"""The Prometheus configuration and alert rules choreo generates (choreo.ops.prometheus): every
process of the stack is a target in both saga modes, promtool accepts the files, and the alerts
fire when they should and not before (`promtool test rules`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from choreo.ops import prometheus as prom
from choreo.ops.stack import process_names
from config.settings import SAGA_MODES, Settings

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (scripts/ensure-services.sh installs Debian's prometheus "
    "package, which has it)",
)


def settings_for(mode: str, tmp_path: Path) -> Settings:
    return Settings(
        saga_mode=mode,
        namespace="choreo",
        run_dir=tmp_path / "run",
        health_port_base=9100,
        user_service_port=8001,
        flower_port=5555,
    )


def promtool(*args: str | Path) -> str:
    out = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.parametrize("mode", SAGA_MODES)
def test_every_process_of_the_stack_is_a_target_with_its_process_label(mode, tmp_path):
    s = settings_for(mode, tmp_path)
    targets = prom.scrape_targets(s)
    assert list(targets) == process_names(s)
    assert ("worker-orchestrator" in targets) == (mode == "orchestrated")
    for domain in s.domains:
        assert targets[f"worker-{domain}"] == f"127.0.0.1:{s.health_port(domain)}"
    assert targets["users"] == f"127.0.0.1:{s.user_service_port}"
    assert targets["monitor"] == f"127.0.0.1:{s.monitor_port}"
    assert targets["flower"] == f"127.0.0.1:{s.flower_port}"
    assert len(set(targets.values())) == len(targets), "two processes share a port"

    text = prom.config_text(s, None)
    for name, target in targets.items():
        assert f'      - targets: ["{target}"]\n        labels: {{process: "{name}"}}\n' in text
    assert f'  - "{prom.rules_path(s)}"' in text
    assert "job_name: rabbitmq" not in text
    assert "job_name: rabbitmq" in prom.config_text(s, "127.0.0.1:15692")


def test_the_status_urls_are_the_scraped_ones(tmp_path):
    s = settings_for("orchestrated", tmp_path)
    urls = prom.endpoints(s)
    assert urls["worker-payment"] == {
        "health": f"{s.health_url('payment')}/health",
        "ready": f"{s.health_url('payment')}/ready",
        "metrics": f"{s.health_url('payment')}/metrics",
    }
    assert urls["flower"]["ready"] is None


@needs_promtool
@pytest.mark.parametrize("mode", SAGA_MODES)
@pytest.mark.parametrize("rabbitmq", [None, "127.0.0.1:15692"])
def test_promtool_accepts_the_config_and_the_rules(mode, rabbitmq, tmp_path):
    s = settings_for(mode, tmp_path)
    rules = tmp_path / "rules.yml"
    rules.write_text(prom.rules_text(s))
    config = tmp_path / "prometheus.yml"
    config.write_text(prom.config_text(s, rabbitmq, rule_file=str(rules)))
    promtool("check", "config", config)
    assert re.search(r"SUCCESS: \d+ rules found", promtool("check", "rules", rules))
    text = rules.read_text()
    for domain in s.domains:
        assert f'absent(choreo_consumer_ready{{service="{domain}"}})' in text
    for alert in (
        "ChoreoProcessDown",
        "ChoreoQueueWithoutConsumer",
        "ChoreoDeadLetterQueueGrowing",
        "ChoreoBreakerOpen",
        "ChoreoOutboxBehind",
        "ChoreoSagasStuck",
    ):
        assert f"- alert: {alert}\n" in text


def test_the_compose_copies_are_what_the_code_generates():
    for name, text in prom.compose_files().items():
        assert (prom.COMPOSE_DIR / name).read_text() == text, (
            f"config/prometheus/{name} is stale: run `python -m choreo.ops.prometheus compose`"
        )
    assert '["order:9101"]' in prom.compose_files()["prometheus.yml"]
    assert '["monitor:9180"]' in prom.compose_files()["prometheus.yml"]


@needs_promtool
def test_promtool_accepts_the_compose_copies():
    # The rule file's path is the container's (/etc/prometheus/rules.yml): syntax only here.
    promtool("check", "config", "--syntax-only", prom.COMPOSE_DIR / "prometheus.yml")
    promtool("check", "rules", prom.COMPOSE_DIR / "rules.yml")


# --- the alerts fire when they should --------------------------------------------------------


def annotations(rules_text: str, alert: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """An alert's summary and description as Prometheus renders them (the templates these rules
    use)."""
    block = rules_text.split(f"- alert: {alert}\n", 1)[1].split("- alert:", 1)[0]
    out = {}
    for key in ("summary", "description"):
        raw = re.search(rf"^ +{key}: '(.*)'$", block, re.M).group(1).replace("''", "'")
        raw = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), raw)
        out[key] = raw.replace("{{ $value | humanizeDuration }}", value).replace(
            "{{ $value }}", value
        )
    return out


def test_annotation_renderer_leaves_no_template(tmp_path):
    text = prom.rules_text(settings_for("choreography", tmp_path))
    rendered = annotations(text, "ChoreoOutboxBehind", {"service": "payment"}, "40s")
    assert "{{" not in str(rendered) and "payment" in rendered["summary"]


def alert(rules_text: str, name: str, series: dict[str, str], value: str, severity: str) -> dict:
    labels = {**series, "severity": severity}
    lines = [f"              {k}: '{v}'" for k, v in labels.items()]
    ann = [
        f"              {k}: '{v.replace(chr(39), chr(39) * 2)}'"
        for k, v in annotations(rules_text, name, series, value).items()
    ]
    return {"labels": "\n".join(lines), "annotations": "\n".join(ann)}


def alert_case(eval_time: str, name: str, fired: list[dict] | None) -> str:
    head = f"      - eval_time: {eval_time}\n        alertname: {name}\n"
    if not fired:
        return head + "        exp_alerts: []\n"
    body = "".join(
        f"          - exp_labels:\n{a['labels']}\n"
        f"            exp_annotations:\n{a['annotations']}\n"
        for a in fired
    )
    return head + "        exp_alerts:\n" + body


@needs_promtool
def test_the_breaker_outbox_and_process_alerts_fire_after_their_for_and_not_before(tmp_path):
    s = settings_for("choreography", tmp_path)
    text = prom.rules_text(s)
    (tmp_path / "rules.yml").write_text(text)
    target = {"job": "choreo", "instance": "127.0.0.1:9101", "process": "worker-order"}
    breaker = {**target, "service": "order", "breaker": "users"}
    half_open = {
        **breaker,
        "service": "payment",
        "instance": "127.0.0.1:9102",
        "process": "worker-payment",
    }
    outbox = {**target, "service": "order"}

    def series(name: str, labels: dict[str, str], values: str) -> str:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"      - series: '{name}{{{selector}}}'\n        values: '{values}'\n"

    # 5 s steps. The breaker opens at 10 s (for: 30s -> fires from 40 s); the payment breaker stays
    # half-open (never an alert). The outbox's oldest row is 40 s old from 15 s (for: 1m -> 75 s).
    # The order worker stops answering at 10 s (for: 30s).
    cases = "".join(
        [
            alert_case("35s", "ChoreoBreakerOpen", None),
            alert_case(
                "45s",
                "ChoreoBreakerOpen",
                [alert(text, "ChoreoBreakerOpen", breaker, "2", "warning")],
            ),
            alert_case("60s", "ChoreoOutboxBehind", None),
            alert_case(
                "80s",
                "ChoreoOutboxBehind",
                [alert(text, "ChoreoOutboxBehind", outbox, "40s", "warning")],
            ),
            alert_case("30s", "ChoreoProcessDown", None),
            alert_case(
                "45s",
                "ChoreoProcessDown",
                [alert(text, "ChoreoProcessDown", target, "0", "critical")],
            ),
        ]
    )
    (tmp_path / "alerts_test.yml").write_text(
        "rule_files: [rules.yml]\n"
        "evaluation_interval: 5s\n"
        "tests:\n"
        "  - interval: 5s\n"
        "    input_series:\n"
        + series("choreo_breaker_state", breaker, "0 0 2x30")
        + series("choreo_breaker_state", half_open, "1x32")
        + series("choreo_outbox_oldest_unsent_seconds", outbox, "0 0 0 40x30")
        + series("up", target, "1 1 0x30")
        + "    alert_rule_test:\n"
        + cases
    )
    promtool("test", "rules", tmp_path / "alerts_test.yml")


@needs_promtool
def test_the_stuck_sagas_alert_fires_per_step_after_2m_once_for_every_order_worker(tmp_path):
    s = settings_for("choreography", tmp_path)
    text = prom.rules_text(s)
    (tmp_path / "rules.yml").write_text(text)

    def series(labels: dict[str, str], values: str) -> str:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"      - series: 'choreo_stuck_sagas{{{selector}}}'\n        values: '{values}'\n"

    # Two order workers report the same count (one read model); 5 s steps. Payment has 3 stuck
    # sagas from 10 s (for: 2m -> fires from 130 s); refund never has any; shipment one for 60 s.
    worker = {"job": "choreo", "instance": "127.0.0.1:9101", "process": "worker-order"}
    second = {"job": "choreo", "instance": "127.0.0.1:9107", "process": "worker-order-2"}
    fired = [alert(text, "ChoreoSagasStuck", {"step": "payment"}, "3", "warning")]
    cases = "".join(
        [
            alert_case("120s", "ChoreoSagasStuck", None),
            alert_case("135s", "ChoreoSagasStuck", fired),
            alert_case("300s", "ChoreoSagasStuck", fired),
        ]
    )
    (tmp_path / "alerts_test.yml").write_text(
        "rule_files: [rules.yml]\n"
        "evaluation_interval: 5s\n"
        "tests:\n"
        "  - interval: 5s\n"
        "    input_series:\n"
        + "".join(
            series({**w, "step": step}, values)
            for w in (worker, second)
            for step, values in (
                ("payment", "0 0 3x70"),
                ("refund", "0x72"),
                ("shipment", "0 0 1x12 0x58"),
            )
        )
        + "    alert_rule_test:\n"
        + cases
    )
    promtool("test", "rules", tmp_path / "alerts_test.yml")
    summary = annotations(text, "ChoreoSagasStuck", {"step": "payment"}, "3")["summary"]
    assert summary == "3 saga(s) stuck waiting on payment"


def test_intervals_and_the_no_consumer_window_come_from_the_settings(tmp_path):
    s = settings_for("choreography", tmp_path).model_copy(
        update={"prometheus_interval": 1.0, "alert_no_consumer_for": 7.5}
    )
    config = prom.config_text(s, None)
    assert "  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 800ms\n" in config
    block = prom.rules_text(s).split("- alert: ChoreoQueueWithoutConsumer\n", 1)[1]
    assert block.split("- alert:", 1)[0].count("        for: 7500ms\n") == 1
    default = prom.config_text(settings_for("choreography", tmp_path), None)
    assert "  scrape_interval: 5s\n  evaluation_interval: 5s\n  scrape_timeout: 4s\n" in default


def test_no_rule_reads_a_worker_s_own_queue_figures_or_rabbitmq_s_plugin(tmp_path):
    text = prom.rules_text(settings_for("orchestrated", tmp_path))
    assert "rabbitmq_" not in text
    # The queue figures are the monitor's: every rule reading them names the queue's kind.
    for expr in re.findall(r"expr: '(.*)'", text):
        for use in re.findall(r"choreo_queue_\w+\{[^}]*\}", expr):
            assert 'kind="' in use, expr


@needs_promtool
def test_the_queue_without_consumer_alert_fires_after_its_window_from_the_monitor(tmp_path):
    s = settings_for("choreography", tmp_path)
    text = prom.rules_text(s)
    (tmp_path / "rules.yml").write_text(text)
    monitor = {"job": "choreo", "instance": "127.0.0.1:9180", "process": "monitor"}
    payment = {**monitor, "queue": "choreo.payment", "domain": "payment", "kind": "queue"}
    dlq = {**payment, "queue": "choreo.payment.dlq", "kind": "dlq"}
    order = {**payment, "queue": "choreo.order", "domain": "order"}

    def series(name: str, labels: dict[str, str], values: str) -> str:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"      - series: '{name}{{{selector}}}'\n        values: '{values}'\n"

    # 5 s steps. Payment's worker dies at 10 s: 0 consumers, messages pile up (79 from 20 s);
    # for: 1m -> fires from 70 s, valued at the messages waiting; clears once it consumes again
    # (at 120 s). The DLQ has no consumer, ever, and no alert of this kind; the order queue
    # keeps its consumer.
    fired = [alert(text, "ChoreoQueueWithoutConsumer", payment, "79", "critical")]
    cases = "".join(
        [
            alert_case("65s", "ChoreoQueueWithoutConsumer", None),
            alert_case("75s", "ChoreoQueueWithoutConsumer", fired),
            alert_case("115s", "ChoreoQueueWithoutConsumer", fired),
            alert_case("125s", "ChoreoQueueWithoutConsumer", None),
        ]
    )
    (tmp_path / "alerts_test.yml").write_text(
        "rule_files: [rules.yml]\n"
        "evaluation_interval: 5s\n"
        "tests:\n"
        "  - interval: 5s\n"
        "    input_series:\n"
        + series("choreo_queue_consumers", payment, "1 1 0x21 1x10")
        + series("choreo_queue_messages", payment, "0 0 5 5 79x19 0x10")
        + series("choreo_queue_consumers", dlq, "0x32")
        + series("choreo_queue_messages", dlq, "4x32")
        + series("choreo_queue_consumers", order, "1x32")
        + series("choreo_queue_messages", order, "0x32")
        + "    alert_rule_test:\n"
        + cases
    )
    promtool("test", "rules", tmp_path / "alerts_test.yml")
    summary = annotations(text, "ChoreoQueueWithoutConsumer", payment, "79")["summary"]
    assert summary == "queue choreo.payment has no consumer (79 messages wait)"


def test_the_ui_links_are_the_paths_the_running_prometheus_answers(tmp_path):
    # Nothing listens on this port: the newer releases' paths, at once.
    s = settings_for("choreography", tmp_path).model_copy(update={"prometheus_port": 1})
    assert prom.ui_links(s, timeout=0.5) == {
        page: f"http://127.0.0.1:1/{page}" for page in ("alerts", "targets", "rules")
    }
    assert prom.alerts(s, timeout=0.5) == []


def test_the_demo_names_the_alerts_its_intended_dead_letters_fire(tmp_path):
    from choreo.cli.processes import DEMO_DEAD_LETTER_ALERTS, demo_alert_lines

    s = settings_for("choreography", tmp_path).model_copy(update={"prometheus_port": 1})
    (line,) = demo_alert_lines(s)
    assert line.startswith("Alerts now: none. Expected after a demo")
    text = prom.rules_text(s)
    for name in DEMO_DEAD_LETTER_ALERTS:  # each is a rule that exists, named in the line
        assert name in line and f"- alert: {name}\n" in text
