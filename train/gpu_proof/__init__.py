"""Tool, not library: the GPU acceptance run (``make gpu-proof``), its stages, the SIGTERM +
resume check and the report."""
