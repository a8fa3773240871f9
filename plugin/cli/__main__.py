"""``python -m plugin.cli``: the same as the ``vmaccel`` command."""

from plugin.cli.app import run

run()
