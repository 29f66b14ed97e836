"""Built-in diffusion backbones, one plugin module each (see benchmark.plugins.DEFAULT_PLUGINS)."""
