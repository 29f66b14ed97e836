"""The plugin manager: built-in plugins and entry-point plugins go through the same hooks."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import pluggy

from benchmark import PROJECT, hookspecs
from benchmark.api import KNOBS, Backbone, Method, PluginContractError
from benchmark.registry import Registry

DEFAULT_PLUGINS = (
    "backbones.uvit",
    "backbones.ddpm_unet",
    "backbones.dit",
    "backbones.sd",
    "methods.dense",
    "methods.dense_ft",
    "methods.asp",
    "methods.ste",
    "methods.progressive",
    "methods.sparsedm",
    "methods.dipgo",
    "methods.uniform_skip",
    "methods.diff_pruning",
    "methods.l1_channel",
    "methods.scratch",
)
ENTRY_POINT_GROUP = PROJECT
DISABLE_AUTOLOAD_ENV = "DIFFPRUNE_BENCH_DISABLE_PLUGIN_AUTOLOAD"


def get_plugin_manager(load_entrypoints: bool | None = None) -> pluggy.PluginManager:
    """A manager with the hookspecs, the built-in plugins and (unless disabled) entry-point plugins."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    try:
        pm.check_pending()  # a misspelled hook name fails loudly instead of being ignored
    except pluggy.PluginValidationError as e:
        raise PluginContractError(f"plugin {pm.get_name(e.plugin)!r}: {e}") from None
    return pm


@dataclass
class Registries:
    methods: Registry[Method]
    backbones: Registry[Backbone]
    versions: dict[str, str]  # plugin name -> distribution version ("builtin" for built-ins)


def build_registries(pm: pluggy.PluginManager | None = None) -> Registries:
    """Call every plugin's ``register_*`` hooks, recording which plugin registered what."""
    pm = pm or get_plugin_manager()
    methods: Registry[Method] = Registry("method", Method)
    backbones: Registry[Backbone] = Registry("backbone", Backbone)
    dist_versions = {pm.get_name(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    versions: dict[str, str] = {}
    for hook_name, registry in (("register_backbones", backbones), ("register_methods", methods)):
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration order
            source = impl.plugin_name
            versions[source] = dist_versions.get(source, "builtin")
            impl.function(register=lambda obj, _r=registry, _s=source: _r.add(obj, _s))
    for entry in methods.entries():
        if entry.obj.knob is not None and entry.obj.knob not in KNOBS:
            raise PluginContractError(
                f"plugin {entry.source!r}: method {entry.obj.name!r} names knob {entry.obj.knob!r}; "
                f"allowed: {', '.join(KNOBS)}"
            )
    return Registries(methods, backbones, versions)
