"""serve: the web page, REST API and OpenAPI docs over the runtime (`pneumoscan serve`).

Needs the [serve] extra (FastAPI, uvicorn, python-multipart); the lean install and `pneumoscan
predict` never import it. Modules: `settings` (ServeSettings and its defaults, no web stack),
`app` (factory, lifespan, routes), `schemas` (pydantic models, the OpenAPI schema), `uploads`
(in-memory multipart parsing and upload checks), `batching` (the worker threads and the dynamic
batcher), `metrics`, `protocol`, and `static/` (the page). The load test (`make bench-serve`) is
`pneumoscan.devtools.loadtest`.

May import: `api`, `runtime` and `core`, and FastAPI. Never torch, never `evaluation` or above.
"""
