"""`shepherd rollout ...`, `shepherd drift ...` and `shepherd history`: watching and steering canaries.

Registered on the main app by `pipelines.cli` (imported at its end)."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from components.errors import ShepherdError
from pipelines.cli import HomeOption, TrackingOption, app, console, friendly, out
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
drift_app = typer.Typer(
    help="What the drift service sees: Evidently drift per revision.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(rollout_app, name="rollout")
app.add_typer(drift_app, name="drift")

BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="'kubernetes' (kubeconfig or in-cluster) or a local plane URL [default: the plane of --home].",
    ),
]
NamespaceOption = Annotated[str, typer.Option("--namespace", "-n", help="The model's namespace.")]
ModelArgument = Annotated[str, typer.Argument(help="The InferenceService (= registered model) name, e.g. churn.")]


class NoBackend(ShepherdError):
    exit_code = 9


def _backend(target: str | None, settings: Settings):
    from serving.backends import PlaneProcess, backend_for

    if target:
        return backend_for(target)
    plane = PlaneProcess.find(settings.home)
    if plane is None:
        raise NoBackend(
            f"no serving plane is running for {settings.home}",
            hint="start one with `shepherd up`, or pass --backend kubernetes",
        )
    return backend_for(plane.url)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _operate(command: str, model: str, namespace: str, reason: str, home, tracking_uri, backend) -> None:
    from serving.rollout.loop import operate

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    try:
        decision = operate(_backend(backend, settings), settings.tracking_uri, namespace, model, command, reason)
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

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    target = _backend(backend, settings)

    def inject() -> None:  # read, change, write: again if the rollout loop wrote in between
        obj = target.get(namespace, model)
        if obj is None or not obj["spec"].get("canary"):
            console.print(f"[yellow]{namespace}/{model} has no Standard-mode canary to inject faults into[/]")
            raise typer.Exit(1)
        obj.pop("status", None)
        container = obj["spec"]["canary"][0]["predictor"]["containers"][0]
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
    """
    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    target = _backend(backend, settings)
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
    from serving.rollout.loop import canary_percent, reconcile_once
    from serving.rollout.machine import Action

    while True:
        active = [
            o["metadata"]["name"]
            for o in target.list()
            if o["metadata"].get("namespace") == namespace
            and canary_percent(o) is not None
            and (model is None or o["metadata"]["name"] == model)
        ]
        if not active:
            done = "every rollout has finished" if last_reason else "no canary is rolling out"
            console.print(done + (f" for {model}" if model else ""))
            return
        finished = 0
        for name in active:
            decision = reconcile_once(target, settings.tracking_uri, namespace, name)
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
    if port:
        start_http_server(port, addr="0.0.0.0", registry=registry)
    provider = PrometheusProvider(prometheus_url) if metrics == "prometheus" else None
    console.print(f"rollout controller: {backend}, namespace {namespace or 'all'}, metrics via {metrics}")
    run(backend_for(backend), settings.tracking_uri, namespace, interval_seconds, provider, RolloutMetrics(registry))


@app.command()
@friendly
def history(
    model: ModelArgument,
    namespace: NamespaceOption = "models",
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    backend: BackendOption = None,
) -> None:
    """Which version served when, and why: registrations, verdicts, rollout steps, promotions, rollbacks."""
    from components import registry

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    client = registry.connect(settings.tracking_uri)
    rows: list[tuple[float, str, str, str]] = []
    for v in client.search_model_versions(f"name='{model}'"):
        verdict = v.tags.get(registry.TAG_VERDICT, "-")
        rows.append((v.creation_timestamp / 1000, f"v{v.version}", "registered", f"evaluation verdict: {verdict}"))
    try:
        events = _backend(backend, settings).events(namespace, model)
    except NoBackend:
        events = []
        console.print("[dim]no serving plane running: registry entries only[/]")
    for e in events:
        version, _, message = e["message"].partition(": ")
        event = re.sub(r"(?<!^)(?=[A-Z])", " ", e["reason"].removeprefix("Rollout")).lower()  # RetrainStarted
        rows.append((e["time"], version, event, message))
    if not rows:
        console.print(f"nothing recorded for {model!r}")
        raise typer.Exit(1)
    aliases = client.get_registered_model(model).aliases
    table = Table(title=f"{model}: history (aliases now: {', '.join(f'@{a}=v{v}' for a, v in aliases.items())})")
    for column in ("time", "version", "event", "why"):
        table.add_column(column, overflow="fold")
    for ts, version, event, why in sorted(rows):
        table.add_row(datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S"), version, event, why)
    out.print(table)


def _drift_url(home, drift_url: str | None) -> str:
    from serving.backends import PlaneProcess

    if drift_url:
        return drift_url.rstrip("/")
    plane = PlaneProcess.find(Settings.from_env(home=home).home)
    if plane is None:
        raise NoBackend("no serving plane (and its drift service) is running", hint="`shepherd up`, or --drift-url")
    return f"{plane.url}/drift"


DriftUrlOption = Annotated[str | None, typer.Option(help="The drift service URL [default: the local plane's].")]


@drift_app.command("status")
@friendly
def drift_status(model: ModelArgument, home: HomeOption = None, drift_url: DriftUrlOption = None) -> None:
    """The latest drift results per revision: share of drifted columns and the top columns (PSI)."""
    import httpx

    body = httpx.get(f"{_drift_url(home, drift_url)}/models/{model}", timeout=30).json()
    table = Table(title=f"{model}: drift (windows: {body['windows']}, computed from {body['minRows']} rows)")
    for column in ("revision", "reference", "rows", "drifted", "share", "top columns (PSI)"):
        table.add_column(column)
    for r in body["results"]:
        top = ", ".join(f"{c} {r['scores'][c]:.2f}" for c in r["drifted"][:3]) or "-"
        drifted = "[red]DRIFT[/]" if r["detected"] else "no"
        table.add_row(
            f"v{r['version']} ({r['role']})", r["reference"], str(r["rows"]), drifted, f"{r['share']:.0%}", top
        )
    out.print(table)


@drift_app.command("check")
@friendly
def drift_check(
    model: ModelArgument,
    retrain: Annotated[bool, typer.Option(help="Start a retraining run when the champion has drifted.")] = True,
    home: HomeOption = None,
    tracking_uri: TrackingOption = None,
    drift_url: DriftUrlOption = None,
) -> None:
    """The embedded default's champion-drift alert: the same threshold as ShepherdChampionDrift; on drift,
    start one retraining run of the champion's stored spec (as the webhook does on a cluster)."""
    import httpx

    from monitoring.rules import DRIFT_MIN_WINDOW_ROWS, DRIFT_SHARE_THRESHOLD
    from monitoring.webhook import LocalRetrainer, record_retraining

    settings = Settings.from_env(home=home, tracking_uri=tracking_uri)
    body = httpx.get(f"{_drift_url(home, drift_url)}/models/{model}", timeout=30).json()
    champion = next((r for r in body["results"] if r["role"] == "champion" and r["reference"] == "training"), None)
    if champion is None or champion["rows"] < DRIFT_MIN_WINDOW_ROWS:
        console.print(f"no drift result for the champion of {model} yet (it needs {body['minRows']} logged rows)")
        raise typer.Exit(1)
    top = ", ".join(f"{c} {champion['scores'][c]:.2f}" for c in champion["drifted"][:4]) or "none"
    share = champion["share"]
    console.print(
        f"{model} v{champion['version']} (champion) vs training: {share:.0%} of features drifted "
        f"(alert at {DRIFT_SHARE_THRESHOLD:.0%}); top PSI: {top}"
    )
    if share < DRIFT_SHARE_THRESHOLD:
        console.print("[green]no drift[/]: nothing to do")
        return
    if not retrain:
        console.print("[yellow]drift[/]: a retraining run would start (--no-retrain given)")
        return
    reason = f"champion drift {share:.0%} (top PSI: {top})"
    started = LocalRetrainer(settings.home, settings.tracking_uri)(model, reason)
    with contextlib.suppress(NoBackend):  # with --drift-url and no local plane there is no object to note it on
        record_retraining(_backend(None, settings), "models", model, f"{reason}; {started}")
    console.print(f"[yellow]drift[/]: retraining started ({started})")


@drift_app.command("report")
@friendly
def drift_report(
    model: ModelArgument,
    role: Annotated[str, typer.Option(help="champion or canary.")] = "champion",
    reference: Annotated[str, typer.Option(help="training (the model's training sample) or champion.")] = "training",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file [default: drift-<model>.html].")
    ] = None,
    home: HomeOption = None,
    drift_url: DriftUrlOption = None,
) -> None:
    """Save Evidently's HTML drift report for one revision's live window against a reference."""
    import httpx

    response = httpx.get(
        f"{_drift_url(home, drift_url)}/models/{model}/report",
        params={"role": role, "reference": reference},
        timeout=120,
    )
    if response.status_code != 200:
        console.print(f"[red]error:[/] {response.json().get('error', response.text)}")
        raise typer.Exit(1)
    path = output or Path(f"drift-{model}-{role}-vs-{reference}.html")
    path.write_text(response.text)
    console.print(f"wrote {path} ({len(response.text) // 1024} KiB); open it in a browser")
