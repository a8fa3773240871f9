"""The ``vmaccel`` command line: one module per command group, errors mapped once in ``app``."""
