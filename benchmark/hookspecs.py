"""The plugin contract of diffprune-bench.

A plugin is any module or object with functions decorated by :data:`benchmark.hookimpl`.
Built-in methods and backbones are plugins like any third-party one; third-party plugins
are found through the ``diffprune_bench`` entry-point group::

    [project.entry-points.diffprune_bench]
    my_method = "my_package.my_method"
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

from benchmark import PROJECT

if TYPE_CHECKING:
    from benchmark.api import Backbone, Method

hookspec = pluggy.HookspecMarker(PROJECT)


# -- registration hooks: called once when the registries are built --------------------


@hookspec
def register_methods(register: Callable[["Method"], None]) -> None:
    """Register pruning methods by calling ``register(method)`` once per method.

    :param register: adds a :class:`benchmark.api.Method` instance to the method registry.
        Raises ``DuplicateNameError`` if the name is taken and ``PluginContractError`` if the
        object lacks a required field.
    """


@hookspec
def register_backbones(register: Callable[["Backbone"], None]) -> None:
    """Register diffusion backbones by calling ``register(backbone)`` once per backbone.

    :param register: adds a :class:`benchmark.api.Backbone` instance to the backbone registry,
        with the same checks as :func:`register_methods`.
    """
