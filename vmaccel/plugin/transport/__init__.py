"""Transports: how disk bytes are read (``file``, ``nbd``, ``http``), behind one protocol."""
