"""Plugins: the built-ins, plugin objects, entry-point packages, and the errors a broken plugin gets."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from benchmark import hookimpl
from benchmark.api import Method, MethodContext, PluginContractError, Pruned
from benchmark.plugins import DEFAULT_PLUGINS, DISABLE_AUTOLOAD_ENV, build_registries, get_plugin_manager
from benchmark.registry import DuplicateNameError, UnknownNameError

BUILTIN_BACKBONES = {"uvit", "ddpm", "dit", "sd"}
BUILTIN_METHODS = {
    "dense", "dense-ft", "asp", "ste", "progressive", "sparsedm", "sparsedm-chained", "dipgo", "uniform-skip",
    "diff-pruning", "l1-channel", "scratch",
}
EXAMPLE_PACKAGE = Path(__file__).parent / "fixtures" / "example_plugin"


def make_method(name: str, **fields: str) -> Method:
    def apply(self, ctx: MethodContext, state: Pruned) -> Pruned:
        return state

    return type("FixtureMethod", (Method,), {"name": name, "version": "1", **fields, "apply": apply})()


class RegistersMethods:
    """A plugin object (not a module) registering the given methods."""

    def __init__(self, *methods: Method):
        self.methods = methods

    @hookimpl
    def register_methods(self, register):
        for method in self.methods:
            register(method)


@pytest.fixture
def pm():
    return get_plugin_manager(load_entrypoints=False)


@pytest.fixture
def install_dist(tmp_path, monkeypatch):
    """Make a distribution with entry points visible to importlib.metadata, as `pip install` would."""
    installed_modules: list[str] = []

    def install(name: str, version: str, entry_points: dict[str, str], module_dir: Path) -> None:
        dist_info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (dist_info / "entry_points.txt").write_text(f"[diffprune_bench]\n{lines}")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.syspath_prepend(str(module_dir))
        installed_modules.extend(entry_points.values())

    yield install
    for module in installed_modules:
        sys.modules.pop(module, None)


def install_example(install_dist) -> None:
    project = tomllib.loads((EXAMPLE_PACKAGE / "pyproject.toml").read_text())["project"]
    install_dist(project["name"], project["version"], project["entry-points"]["diffprune_bench"], EXAMPLE_PACKAGE)


class TestBuiltins:
    """Every built-in method and backbone arrives through the plugin manager."""

    def test_all_builtins_load(self):
        registries = build_registries()
        assert set(registries.backbones.names()) == BUILTIN_BACKBONES
        assert set(registries.methods.names()) == BUILTIN_METHODS
        for entry in registries.methods.entries() + registries.backbones.entries():
            assert entry.source in DEFAULT_PLUGINS
            assert registries.versions[entry.source] == "builtin"

    @pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
    def test_method_fields(self, name):
        method = build_registries().methods.get(name)
        assert method.name == name
        assert isinstance(method.version, str) and method.version
        assert isinstance(method.description, str) and method.description


class TestPluginObjects:
    """Plugins registered in-process, and what the registry refuses."""

    def test_plugin_adds_method(self, pm):
        pm.register(RegistersMethods(make_method("fixture-noop")), name="fixture")
        registries = build_registries(pm)
        assert "fixture-noop" in registries.methods.names()
        assert registries.methods.entry("fixture-noop").source == "fixture"

    def test_duplicate_name_raises(self, pm):
        pm.register(RegistersMethods(make_method("dense")), name="copycat")
        with pytest.raises(DuplicateNameError, match="'dense' registered twice.*methods.dense.*copycat"):
            build_registries(pm)

    def test_missing_field_raises(self, pm):
        pm.register(RegistersMethods(make_method("unversioned", version="")), name="sloppy")
        with pytest.raises(PluginContractError, match="sloppy.*without required field.*version"):
            build_registries(pm)

    def test_wrong_type_raises(self, pm):
        class NotAMethod:
            name, version = "imposter", "1"

        pm.register(RegistersMethods(NotAMethod()), name="sloppy")
        with pytest.raises(PluginContractError, match="not a Method"):
            build_registries(pm)

    def test_unknown_name_suggests(self):
        methods = build_registries().methods
        with pytest.raises(UnknownNameError, match=r"did you mean 'sparsedm'\?.*available: .*uniform-skip"):
            methods.get("sparsdm")


class TestEntryPoints:
    """Third-party packages found through the ``diffprune_bench`` entry-point group."""

    def test_entry_point_plugin_loads(self, install_dist, monkeypatch):
        monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
        install_example(install_dist)
        registries = build_registries(get_plugin_manager())
        assert "example-noop" in registries.methods.names()
        entry = registries.methods.entry("example-noop")
        assert entry.source == "example"
        assert registries.versions["example"] == "0.1.0"

    def test_load_setuptools_entrypoints_finds_it(self, install_dist, pm):
        install_example(install_dist)
        assert pm.load_setuptools_entrypoints("diffprune_bench") == 1
        assert "example-noop" in build_registries(pm).methods.names()

    def test_env_var_disables_autoload(self, install_dist, monkeypatch):
        install_example(install_dist)
        monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
        assert "example-noop" not in build_registries(get_plugin_manager()).methods.names()

    def test_misspelled_hook_fails_loudly(self, install_dist, tmp_path, monkeypatch):
        monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
        module_dir = tmp_path / "src"
        module_dir.mkdir()
        (module_dir / "misspelled_plugin.py").write_text(
            "from benchmark import hookimpl\n\n@hookimpl\ndef register_method(register):\n    pass\n"
        )
        install_dist("misspelled", "0.1.0", {"misspelled": "misspelled_plugin"}, module_dir)
        with pytest.raises(PluginContractError, match="misspelled.*register_method"):
            get_plugin_manager()
