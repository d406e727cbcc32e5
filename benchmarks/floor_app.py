"""The transport floor: a bare ASGI app that answers every request with a constant JSON body."""

BODY = b'{"predictions": [{"label": "No", "probability": 0.1}]}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _fastapi_app():
    from fastapi import FastAPI
    from fastapi.responses import Response

    fastapi_app = FastAPI()

    @fastapi_app.post("/")
    async def constant() -> Response:
        return Response(BODY, media_type="application/json")

    return fastapi_app


# The same constant answer through FastAPI routing (what KServe's server is built on).
fastapi_app = _fastapi_app()


def serve_kserve_constant(port: int) -> None:
    """kserve.ModelServer with a model that returns a constant: KServe's framework cost alone."""
    import logging.config
    from pathlib import Path

    import kserve
    import yaml

    class Constant(kserve.Model):
        def load(self) -> bool:
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            return {"predictions": [{"label": "No", "probability": 0.1}]}

    model = Constant("churn")
    model.load()
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
    quiet = Path(__file__).resolve().parent.parent / "serving" / "quiet_logging.yaml"
    logging.config.dictConfig(yaml.safe_load(quiet.read_text()))  # as Shepherd's predictor runs
    server.start([model])


if __name__ == "__main__":
    import sys

    serve_kserve_constant(int(sys.argv[1]))
