"""A real `pneumoscan serve`-like process whose model sleeps after every prediction, for the
overload tests: `python slow_server.py --port P --delay S --timeout T --budget-mb M`.

The app, settings and models are the server's own (`create_app`, `ServeSettings`,
`_load_models`); only the model's `predict` is slowed, so requests time out while their
prediction runs on, as they would behind a model far slower than its request time limit."""

from __future__ import annotations

import argparse
import time

import uvicorn

from pneumoscan.serve.app import _load_models, create_app
from pneumoscan.serve.settings import MB, ServeSettings


class SlowModel:
    """A real model that holds its slot `delay` seconds longer after each prediction (sleeping
    after the work, so the decoding's memory is part of the first request, not of a later one)."""

    def __init__(self, model, delay: float) -> None:
        self.model = model
        self.delay = delay

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, *args, **kwargs):
        try:
            return self.model.predict(*args, **kwargs)
        finally:
            time.sleep(self.delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--budget-mb", type=int, default=256)
    args = parser.parse_args()
    settings = ServeSettings(
        models=("binary",),
        parallel=1,
        request_timeout_s=args.timeout,
        max_in_flight=args.clients,
        max_in_flight_per_client=args.clients,
        memory_budget_bytes=args.budget_mb * MB,
    )
    models = {name: SlowModel(model, args.delay) for name, model in _load_models(settings).items()}
    uvicorn.run(
        create_app(settings, models=models), host="127.0.0.1", port=args.port, log_config=None
    )


if __name__ == "__main__":
    main()
