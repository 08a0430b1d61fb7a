"""`choreo trace ORDER_ID [--json] [--jaeger URL]`: one saga's spans across every
service, as a waterfall."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from choreo.cli.base import console, current_settings, fail
from choreo.ops import traceview

BAR_WIDTH = 40
PLAIN_WIDTH = 200  # when stdout is not a terminal (a pipe, a file): wide enough that no row wraps
OUTCOME_STYLE = {
    "processed": "green",
    "duplicate": "yellow",
    "retry": "yellow",
    "requeue": "yellow",
    "dead_lettered": "red",
    "poison": "red",
}
EVENT_STYLE = {
    "retry": "yellow",
    "dead_letter": "red",
    "compensation": "magenta",
    "duplicate": "yellow",
}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f} ms"


def _outcome_cell(span: dict) -> Text:
    text = Text()
    if span["outcome"]:
        text.append(span["outcome"], style=OUTCOME_STYLE.get(span["outcome"], ""))
    if span["status"] == "ERROR":
        text.append((" " if text else "") + "ERROR", style="bold red")
    for name in span["events"]:
        text.append((" " if text else "") + f"[{name}]", style=EVENT_STYLE.get(name, "dim"))
    return text


def _attempt_cell(span: dict) -> str:
    parts = []
    if span["attempt"] is not None:
        parts.append(f"#{span['attempt']}")
    if span["retries"]:
        parts.append(f"{span['retries']} retr{'y' if span['retries'] == 1 else 'ies'}")
    return " ".join(parts)


def _message_cell(span: dict) -> Text:
    text = Text(span["name"])
    if span["relay"]:
        text.append(" (relay)", style="cyan")
    if span["destination"]:
        text.append(f" → {span['destination']}", style="dim")
    return text


def waterfall_table(view: dict) -> Table:
    total = view["duration_ms"]
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("service", no_wrap=True)
    table.add_column("message", overflow="fold")
    table.add_column("kind", no_wrap=True, style="dim")
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("queue wait", justify="right", no_wrap=True)
    table.add_column("attempt", no_wrap=True)
    table.add_column("outcome / events", overflow="fold")
    table.add_column(f"waterfall (0 → {total:,.1f} ms)", no_wrap=True, min_width=BAR_WIDTH)
    for span in view["spans"]:
        bar_style = (
            "red"
            if span["status"] == "ERROR" or span["outcome"] in ("dead_lettered", "poison")
            else (
                "yellow"
                if span["retries"] or span["outcome"] == "retry"
                else "green"
                if span["kind"] == "CONSUMER"
                else "blue"
            )
        )
        table.add_row(
            "  " * span["depth"] + span["service"],
            _message_cell(span),
            span["kind"].lower(),
            _ms(span["start_offset_ms"]),
            _ms(span["duration_ms"]),
            _ms(span["queue_wait_ms"]),
            _attempt_cell(span),
            _outcome_cell(span),
            Text(
                traceview.waterfall_bar(
                    span["start_offset_ms"], span["duration_ms"], total, BAR_WIDTH
                ),
                style=bar_style,
            ),
        )
    return table


def header_line(view: dict) -> str:
    traces = ", ".join(view["trace_ids"])
    return (
        f"order {view['order_id']}  trace {traces}  services {', '.join(view['services'])}  "
        f"{view['span_count']} spans  {view['duration_ms']:,.3f} ms from {view['started_at']}"
    )


def _spans_from_files(settings, order_id: str) -> list[dict]:
    trace_dir = settings.trace_dir
    if not trace_dir.is_dir():
        fail(
            f"no span folder at {trace_dir}: tracing may be off (CHOREO_TRACING) or spans go to "
            f"an OTLP collector (try --jaeger URL), or nothing has run here yet "
            f"(CHOREO_RUN_DIR={settings.run_dir})"
        )
    spans = traceview.load_saga(trace_dir, order_id)
    if not spans:
        files = len(traceview.span_files(trace_dir))
        fail(
            f"no spans for order {order_id} in {trace_dir} ({files} span file(s)): "
            "tracing may be off, or the spans are not flushed yet "
            "(spans are flushed every second; try again)"
        )
    return spans


def _spans_from_jaeger(settings, url: str, order_id: str) -> list[dict]:
    import httpx

    services = tuple(dict.fromkeys((*traceview.JAEGER_SERVICES, *settings.domains)))
    try:
        spans = traceview.load_saga_jaeger(url, order_id, services)
    except (httpx.HTTPError, ValueError) as exc:
        fail(
            f"Jaeger query at {url} failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        )
    if not spans:
        fail(
            f"no spans for order {order_id} in Jaeger at {url} (services {', '.join(services)}): "
            "tracing may be off, or the spans are not exported yet "
            "(the exporter batches them; try again)"
        )
    return spans


@click.command()
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON (a stable contract).")
@click.option(
    "--jaeger",
    "jaeger_url",
    default=None,
    metavar="URL",
    help="Read the spans from a Jaeger query service (e.g. http://127.0.0.1:16686) "
    "instead of span files.",
)
def trace(order_id: str, as_json: bool, jaeger_url: str | None) -> None:
    """One saga's spans across every service, as a waterfall: causal order, queue waits, retries."""
    settings = current_settings()
    spans = (
        _spans_from_jaeger(settings, jaeger_url, order_id)
        if jaeger_url
        else _spans_from_files(settings, order_id)
    )
    view = traceview.build_view(order_id, spans)
    if as_json:
        print(json.dumps(view, indent=2))
        return
    out = console if console.is_terminal else Console(width=PLAIN_WIDTH)
    out.print(header_line(view), highlight=False, soft_wrap=True)
    out.print(waterfall_table(view))
