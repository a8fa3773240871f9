"""The REST API of ``vmaccel serve`` (``/api/v1``): HTTP over the service layer.

``app``       the FastAPI application (:func:`~vmaccel.api.app.create_app`), OpenAPI document
``server``    :func:`~vmaccel.api.server.run`: bind, serve HTTPS with uvicorn, stop on request
``tls``       the given certificate or a self-signed one made on first start
``auth``      bearer tokens, scopes (read < restore < admin), the failed-attempt limit
``errors``    the one mapping of errors to JSON bodies and HTTP statuses
``jsonbody``  ASCII JSON answers (guest names that are not UTF-8)
``download``  guest files streamed from their image, with ranges
``tasks``     restores run as tasks with progress (in the server process)
``routes/``   one router per resource: system, backups, files, restores, policies, jobs

docs/api.md describes the API for its users.
"""
