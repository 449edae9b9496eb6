"""The web page, REST API and OpenAPI docs over the torch-free predictor (`pneumoscan serve`).

Needs the [serve] extra (FastAPI, uvicorn, python-multipart); the lean install and `pneumoscan
predict` never import it. Modules: `app` (factory, lifespan, routes), `schemas` (pydantic models,
the OpenAPI schema), `uploads` (in-memory multipart parsing and upload checks), `static/` (page).
"""
