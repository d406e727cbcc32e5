"""What the predictor changes in KServe's server: no per-request CPU timing unless asked, uvloop under it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
from fastapi import FastAPI
from timing_asgi import TimingClient, TimingMiddleware
from timing_asgi.integrations import StarletteScopeToName

from serving.predictor import drop_request_timing
from tests.conftest import REPO


class RecordedTimings(TimingClient):
    def __init__(self):
        self.names = []

    def timing(self, metric_name, timing, tags):
        self.names.append(metric_name)


def app_as_kserve_builds_it(timings: RecordedTimings) -> FastAPI:
    """A FastAPI app with KServe's TimingMiddleware plus another middleware that must keep working."""
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {"ok": True}

    @app.middleware("http")
    async def stamp(request, call_next):
        response = await call_next(request)
        response.headers["x-stamped"] = "yes"
        return response

    app.add_middleware(
        TimingMiddleware, client=timings, metric_namer=StarletteScopeToName(prefix="kserve.io", starlette_app=app)
    )
    return app


def get(app: FastAPI, path: str) -> httpx.Response:
    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://predictor") as client:
            return await client.get(path)

    return asyncio.run(call())


def test_kserve_timing_middleware_times_every_request_by_default():
    timings = RecordedTimings()
    assert get(app_as_kserve_builds_it(timings), "/ping").status_code == 200
    assert timings.names, "the control case must show the middleware at work"


def test_dropped_timing_middleware_times_nothing_and_other_middleware_still_runs():
    timings = RecordedTimings()
    app = app_as_kserve_builds_it(timings)
    drop_request_timing(app)
    response = get(app, "/ping")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.headers["x-stamped"] == "yes"
    assert timings.names == []


WHICH_LOOP = """
import asyncio, sys
from serving.predictor import install_event_loop
chosen = install_event_loop(sys.argv[1])
async def running():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
print(chosen, asyncio.run(running()))
"""


def loop_for(flag: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WHICH_LOOP, flag], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_kserve_event_loop_flag_puts_uvloop_under_asyncio_run():
    assert loop_for("auto") == "uvloop uvloop"
    assert loop_for("uvloop") == "uvloop uvloop"


def test_asyncio_event_loop_flag_keeps_the_standard_loop():
    assert loop_for("asyncio") == "asyncio asyncio"
