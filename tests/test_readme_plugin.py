"""The method plugin shown in README.md registers and produces a valid 2:4 model, as written there."""
import copy
import re
import types
from pathlib import Path

import pluggy
import pytest

from benchmark import PROJECT, hookspecs
from benchmark.api import NMPattern, Pruned
from benchmark.plugins import build_registries
from benchmark.sparsity import validate_nm
from test_methods_nm import TinyEps, make_context

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_plugin() -> types.ModuleType:
    code = re.search(r"```python\n(# methods/my_magnitude\.py\n.*?)```", README.read_text(), re.S).group(1)
    module = types.ModuleType("my_magnitude")
    exec(compile(code, str(README), "exec"), module.__dict__)
    return module


def test_readme_example_plugin_registers_and_prunes():
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(readme_plugin(), name="my_magnitude")
    method = build_registries(pm).methods.get("my-magnitude")

    dense = TinyEps().eval()
    ctx = make_context(teacher=dense)
    pruned = method.apply(ctx, Pruned(copy.deepcopy(dense).train()))
    assert isinstance(pruned, Pruned) and pruned.pattern == NMPattern(2, 4)
    assert pruned.train_steps == ctx.train_steps
    masked = sum(mask.numel() for mask in pruned.masks.values())
    skipped = pruned.model.stem.weight.numel()  # input dim 1 cannot be 2:4: recorded, kept dense
    assert pruned.skipped_layers.keys() == {"stem"}
    assert validate_nm(pruned.model, pruned) == pytest.approx(0.5 * masked / (masked + skipped))
