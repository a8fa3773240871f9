"""The daemon of ``vmaccel serve``: runs due policies, retries, maintenance and notifications."""
