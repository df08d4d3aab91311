"""The front doors and the project around the engine: the pytest plugin, CI's script, the
deployment files, the tools, the layers and the docs."""
