"""Tool, not library: the ``make demo`` driver."""
