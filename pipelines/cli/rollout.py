"""`shepherd rollout ...`: watch and steer canary rollouts (step up while the gates pass, promote or roll back)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import (
    BackendOption,
    HomeOption,
    ModelArgument,
    NamespaceOption,
    TrackingOption,
    app,
    console,
    friendly,
    out,
    serving_backend,
)
from pipelines.settings import DEFAULT_SPEC, Settings

rollout_app = typer.Typer(
    help=(
        "Watch and steer canary rollouts: step the canary up while its gates pass, promote or roll back.\n\n"
        "  shepherd rollout watch            # run the rollout loop here and print the timeline\n\n"
        "  shepherd rollout rollback churn   # canary to 0 % now; aliases stay with the champion\n\n"
        "  shepherd rollout pause|resume churn, shepherd rollout promote churn (approve the last step)\n\n"
        "  shepherd rollout controller ...   # the loop as a service (the Helm chart runs it)"
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(rollout_app, name="rollout")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _operate(command: str, model: str, namespace: str, reason: str, home, tracking_uri, backend) -> None:
    from serving.rollout.loop import operate

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    try:
        decision = operate(serving_backend(backend, settings), settings.tracking_uri, namespace, model, command, reason)
    except LookupError as exc:
        console.print(f"[yellow]{exc}[/]; nothing to {command}")
        raise typer.Exit(1) from None
    state = decision.state
    console.print(f"{model} v{state.canary_version}: {decision.reason} (phase {state.phase})")


@rollout_app.command()
@friendly
def rollback(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    reason: Annotated[str, typer.Option(help="Why; recorded on the version and in the history.")] = "",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Roll the canary back now: 0 % traffic, @champion unchanged, the version tagged with the reason."""
    _operate("rollback", model, namespace, reason, home, tracking_uri, backend)


@rollout_app.command()
@friendly
def pause(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    reason: Annotated[str, typer.Option(help="Why; recorded in the history.")] = "",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Hold the canary at its current step until `resume` (alerts can still roll it back)."""
    _operate("pause", model, namespace, reason, home, tracking_uri, backend)


@rollout_app.command()
@friendly
def resume(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Resume a paused rollout; the current step's interval starts again."""
    _operate("resume", model, namespace, "", home, tracking_uri, backend)


@rollout_app.command()
@friendly
def promote(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Approve the last step of a rollout whose policy asks for manual approval (its gates still apply)."""
    _operate("approve", model, namespace, "", home, tracking_uri, backend)


@rollout_app.command()
@friendly
def fault(
    model: ModelArgument,
    error_rate: Annotated[float, typer.Option(help="Share of the canary's requests to fail with a 500 (0 heals).")],
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Rollback drill: make the canary fail a share of its requests (SHEPHERD_FAULT_ERROR_RATE on its
    predictor), then watch the gates or the alerts take it out."""
    from serving.predictor import ENV_FAULT_ERROR_RATE

    if not 0.0 <= error_rate <= 1.0:
        console.print(f"[red]error:[/] --error-rate must be within 0..1, got {error_rate}")
        raise typer.Exit(2)
    from serving.backends import retry_on_conflict
    from serving.inference_service_view import InferenceServiceView

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    target = serving_backend(backend, settings)

    def inject() -> None:  # read, change, write: again if the rollout loop wrote in between
        obj = target.get(namespace, model)
        if obj is None or InferenceServiceView(obj).mode != "standard":
            console.print(f"[yellow]{namespace}/{model} has no Standard-mode canary to inject faults into[/]")
            raise typer.Exit(1)
        obj.pop("status", None)
        container = InferenceServiceView(obj).container("canary")
        env = [e for e in container.get("env") or [] if e["name"] != ENV_FAULT_ERROR_RATE]
        container["env"] = env + ([{"name": ENV_FAULT_ERROR_RATE, "value": str(error_rate)}] if error_rate else [])
        target.apply(obj)

    retry_on_conflict(inject)
    console.print(f"canary of {model} now fails {error_rate:.0%} of its requests (a new revision replaced it)")


@rollout_app.command()
@friendly
def watch(
    model: Annotated[str | None, typer.Argument(help="Only this model [default: every canary].")] = None,
    namespace: NamespaceOption = "models",
    interval: Annotated[float, typer.Option(help="Seconds between reconciles.")] = 2.0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds (0: never).")] = 0,
    traffic: Annotated[
        float, typer.Option(help="Also send this many requests/s of real rows through the router (demos).")
    ] = 0,
    spec: Annotated[Path, typer.Option(help="Spec whose source rows --traffic sends.")] = DEFAULT_SPEC,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Run the rollout loop in the foreground and print each decision until the rollouts finish.

    Each interval the gates (error rate, p99 latency vs the champion, drift vs training, predictions vs
    the champion) are read from the revisions' /metrics and the plane's drift service; the canary steps
    up, waits, promotes or rolls back. State lives on the InferenceService: stop and restart any time.
    If the plane goes away mid-rollout (a restart), watch waits for it, backing off up to 30 s, until --timeout.
    """
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    target = serving_backend(backend, settings)
    deadline = time.monotonic() + timeout if timeout else None
    last_reason: dict[str, str] = {}
    if traffic and not hasattr(target, "url"):
        console.print("[red]error:[/] --traffic sends through the local plane's router; not with --backend kubernetes")
        raise typer.Exit(2)
    sender = _background_traffic(target.url, spec, traffic) if traffic else None
    try:
        _watch(target, settings, namespace, model, interval, deadline, timeout, last_reason)
    finally:
        if sender is not None:
            sender.set()


def _background_traffic(url: str, spec: Path, per_second: float):
    """Real rows through the router at about `per_second` requests/s until the returned event is set."""
    import threading

    from components.data import load_source, split_source
    from components.spec import load_spec
    from serving.traffic import instances, send

    model_spec = load_spec(spec)
    features, _ = split_source(load_source(model_spec), model_spec)
    rows = instances(model_spec, features.sample(1000, random_state=0))
    stop = threading.Event()

    def run() -> None:
        import httpx

        while not stop.is_set():
            started = time.monotonic()
            try:
                send(url, model_spec, rows[int(started * 1000) % 900 :], max(1, int(per_second)), batch=5)
            except httpx.HTTPError as exc:  # the demo's customers retry; the plane's log says what happened
                console.print(f"[dim]traffic: {type(exc).__name__}; retrying[/]")
            stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    threading.Thread(target=run, daemon=True).start()
    console.print(f"[dim]sending ~{per_second:.0f} requests/s of real {model_spec.name} rows to {url}[/]")
    return stop


def _watch(target, settings, namespace, model, interval, deadline, timeout, last_reason) -> None:
    from serving.backends import ServingError
    from serving.rollout.controller import Backoff
    from serving.rollout.loop import canary_percent, reconcile_once
    from serving.rollout.machine import Action

    backoff, reached = Backoff(interval), False
    while True:
        try:
            active = [
                o["metadata"]["name"]
                for o in target.list()
                if o["metadata"].get("namespace") == namespace
                and canary_percent(o) is not None
                and (model is None or o["metadata"]["name"] == model)
            ]
        except ServingError as exc:
            if not reached:  # never answered: most likely not started, say how to start it
                raise
            # It answered before and went away (restarting?): wait for it, the state is on the objects.
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"[yellow]the serving backend is still unavailable after {timeout:.0f} s[/]: {exc}")
                raise typer.Exit(1) from None
            delay = backoff.failed()
            console.print(f"[yellow]{exc}[/]; retrying in {delay:.0f} s")
            time.sleep(delay)
            continue
        backoff.succeeded()
        reached = True
        if not active:
            done = "every rollout has finished" if last_reason else "no canary is rolling out"
            console.print(done + (f" for {model}" if model else ""))
            return
        finished = 0
        for name in active:
            try:
                decision = reconcile_once(target, settings.tracking_uri, namespace, name)
            except ServingError as exc:  # went away mid-pass: the next pass waits for it
                console.print(f"[yellow]{name}: {exc}[/]")
                continue
            if decision is None:
                finished += 1
                continue
            state = decision.state
            if decision.reason != last_reason.get(name):
                last_reason[name] = decision.reason
                style = {Action.ROLLBACK: "bold red", Action.PROMOTE: "bold green", Action.STEP: "green"}.get(
                    decision.action, "dim" if decision.action is Action.HOLD else "yellow"
                )
                out.print(
                    f"{_clock(time.time())}  {name} v{state.canary_version}  [{style}]{decision.action:<14}[/]"
                    f" {state.phase:<17} {decision.reason}",
                    highlight=False,
                )
            if decision.reason.startswith("rollout already"):
                finished += 1
        if finished == len(active):
            return
        if deadline is not None and time.monotonic() > deadline:
            console.print(f"[yellow]still rolling out after {timeout:.0f} s[/]; the state is on the object")
            raise typer.Exit(1)
        time.sleep(interval)


@rollout_app.command()
@friendly
def controller(
    backend: Annotated[str, typer.Option(help="'kubernetes' or a local plane URL.")] = "kubernetes",
    namespace: Annotated[str | None, typer.Option(help="Only this namespace [default: all].")] = None,
    metrics: Annotated[str, typer.Option(help="'prometheus' (PromQL) or 'scrape' (each revision's /metrics).")] = (
        "prometheus"
    ),
    prometheus_url: Annotated[
        str | None,
        typer.Option(envvar="SHEPHERD_PROMETHEUS_URL", help="Prometheus base URL (with --metrics prometheus)."),
    ] = None,
    interval_seconds: Annotated[float, typer.Option(help="Seconds between reconciles.")] = 5.0,
    port: Annotated[int, typer.Option(help="Port for /metrics and /healthz (0: none).")] = 8080,
    tracking_uri: TrackingOption = None,
) -> None:
    """The rollout loop as a long-running service (the Helm chart's rollout-controller).

    Reconciles every InferenceService with a canary; exports shepherd_rollout_* metrics on --port.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    from serving.backends import backend_for
    from serving.rollout.controller import RolloutMetrics, run
    from serving.rollout.providers import PrometheusProvider

    if metrics not in ("prometheus", "scrape"):
        console.print(f"[red]error:[/] --metrics {metrics!r}; expected prometheus or scrape")
        raise typer.Exit(2)
    if metrics == "prometheus" and not prometheus_url:
        console.print("[red]error:[/] --metrics prometheus needs --prometheus-url (or SHEPHERD_PROMETHEUS_URL)")
        raise typer.Exit(2)
    settings = Settings.from_env(tracking_uri=tracking_uri)
    registry = CollectorRegistry()
    if port:  # in a pod on every interface (the Service scrapes it); beside a local plane on loopback only
        start_http_server(port, addr="0.0.0.0" if backend == "kubernetes" else "127.0.0.1", registry=registry)
    provider = PrometheusProvider(prometheus_url) if metrics == "prometheus" else None
    console.print(f"rollout controller: {backend}, namespace {namespace or 'all'}, metrics via {metrics}")
    run(backend_for(backend), settings.tracking_uri, namespace, interval_seconds, provider, RolloutMetrics(registry))
