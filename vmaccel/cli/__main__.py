"""``python -m vmaccel.cli``: the same as the ``vmaccel`` command."""

from vmaccel.cli.app import run

run()
