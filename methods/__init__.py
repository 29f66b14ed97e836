"""Built-in pruning methods, one plugin module each (see benchmark.plugins.DEFAULT_PLUGINS)."""
