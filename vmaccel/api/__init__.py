"""The REST API of ``vmaccel serve`` (``/api/v1``): HTTP over the service layer."""
