import itertools

import pytest
import torch
from torch import nn

from benchmark.api import NMPattern, Pruned
from benchmark.sparsity import (
    MaskValidationError,
    attach,
    finalize,
    nm_mask,
    set_pattern,
    skip_reason,
    validate_nm,
)

P24 = NMPattern(2, 4)


def brute_force_mask(rows: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Per group of ``m`` along the last dim, keep the ``n`` largest |w| (lower index wins ties)."""
    mask = torch.zeros_like(rows, dtype=torch.bool)
    for r in range(rows.shape[0]):
        for g in range(0, rows.shape[1], pattern.m):
            group = [(-abs(float(rows[r, g + i])), i) for i in range(pattern.m)]
            for _, i in sorted(group)[: pattern.n]:
                mask[r, g + i] = True
    return mask


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(1, 4), NMPattern(5, 8), NMPattern(1, 2)])
def test_linear_mask_keeps_n_largest_per_group(pattern):
    weight = torch.randn(6, 16)
    mask = nm_mask(weight, pattern)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert (mask.reshape(6, -1, pattern.m).sum(-1) == pattern.n).all()
    assert torch.equal(mask, brute_force_mask(weight, pattern))


def test_ties_break_towards_lower_index():
    weight = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert nm_mask(weight, P24).tolist() == [[True, True, False, False, True, True, False, False]]


def test_conv_groups_run_along_input_channels():
    weight = torch.randn(3, 8, 2, 2)
    mask = nm_mask(weight, P24)
    assert (mask.reshape(3, 2, 4, 2, 2).sum(dim=2) == 2).all()  # every (o, group, kh, kw) keeps 2 of 4 channels
    rows = weight.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(mask.permute(0, 2, 3, 1).reshape(-1, 8), brute_force_mask(rows, P24))


def test_skip_reason():
    assert skip_reason(torch.zeros(4, 8), P24) is None
    assert skip_reason(torch.zeros(4, 3, 3, 3), P24) == "input dim 3 not divisible by M=4"
    assert skip_reason(torch.zeros(4, 12), NMPattern(7, 8)) == "input dim 12 not divisible by M=8"
    assert "dim" in skip_reason(torch.zeros(4), P24)
    with pytest.raises(ValueError, match="not divisible"):
        nm_mask(torch.zeros(4, 6), P24)


def test_attach_records_skipped_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Linear(6, 4))
    skipped = attach(model, {"0": model[0], "1": model[1], "2": model[2]}, P24, mode="fixed")
    assert skipped == {"0": "input dim 3 not divisible by M=4", "2": "input dim 6 not divisible by M=4"}
    assert set(finalize(model)) == {"1"}


def ste_gradient(decay: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense weight, input, gradient on the dense weight) for loss sum((x W_masked^T)^2)."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 3, bias=False)
    dense = layer.weight.detach().clone()
    attach(layer, {"": layer}, P24, mode="ste", decay=decay)
    x = torch.randn(5, 8)
    layer(x).pow(2).sum().backward()
    return dense, x, layer.parametrizations.weight.original.grad


def test_ste_gradient_reaches_masked_weights_and_adds_srste_decay():
    dense, x, grad = ste_gradient(0.0)
    mask = nm_mask(dense, P24)
    out = x @ (dense * mask).t()
    assert torch.allclose(grad, 2 * out.t() @ x, atol=1e-5)  # the masked output's gradient, passed straight through
    assert (grad[~mask] != 0).all()
    _, _, grad_with_decay = ste_gradient(0.5)
    assert torch.allclose(grad_with_decay - grad, 0.5 * (~mask) * dense, atol=1e-6)


def test_ste_mask_follows_the_dense_weights():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    attach(layer, {"": layer}, P24, mode="ste")
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert layer.weight.tolist() == [[0.0, 0.0, 3.0, 4.0]]


def test_fixed_mask_blocks_gradient_at_pruned_positions():
    layer = nn.Linear(8, 3)
    mask = nm_mask(layer.weight, P24)
    attach(layer, {"": layer}, P24, mode="fixed")
    layer(torch.randn(5, 8)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).all()
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.randn(3, 8))  # new magnitudes; the mask must stay
    assert torch.equal(layer.weight != 0, mask)


def test_set_pattern_recomputes_and_reports_layers_that_cannot_take_it():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4))
    attach(model, {"0": model[0], "1": model[1]}, P24, mode="ste")
    dense_now = set_pattern(model, NMPattern(7, 8), fixed=False)
    assert dense_now == {"1": "input dim 4 not divisible by M=8"}
    assert int((model[0].weight == 0).sum()) == 4 and bool((model[1].weight != 0).all())
    set_pattern(model, P24, fixed=True)
    assert int((model[1].weight == 0).sum()) == 8


def test_finalize_leaves_exactly_masked_weights():
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.Linear(8, 4))
    attach(model, {"0": model[0], "1": model[1]}, P24, mode="ste", decay=2e-4)
    dense = {name: model[int(name)].parametrizations.weight.original.detach().clone() for name in ("0", "1")}
    masks = finalize(model)
    for name, mask in masks.items():
        layer = model[int(name)]
        assert type(layer) in (nn.Conv2d, nn.Linear) and isinstance(layer.weight, nn.Parameter)
        assert torch.equal(mask, nm_mask(dense[name], P24))
        assert torch.equal(layer.weight.detach(), dense[name] * mask)


def sparse_model() -> tuple[nn.Module, Pruned]:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(3, 4))
    skipped = attach(model, {"0": model[0], "1": model[1]}, P24, mode="fixed")
    return model, Pruned(model, finalize(model), pattern=P24, skipped_layers=skipped)


def test_validate_nm_measures_sparsity_with_skipped_layers_dense():
    model, pruned = sparse_model()
    assert pruned.skipped_layers == {"1": "input dim 3 not divisible by M=4"}
    assert validate_nm(model, pruned) == pytest.approx(32 / (64 + 12))
    assert validate_nm(model, Pruned(model, pruned.masks, pattern=P24)) == 0.5


def test_validate_nm_rejects_a_nonzero_pruned_weight():
    model, pruned = sparse_model()
    pruned_position = (~pruned.masks["0"]).nonzero()[0].tolist()
    with torch.no_grad():
        model[0].weight[tuple(pruned_position)] = 1e-3
    with pytest.raises(MaskValidationError, match="1 non-zero"):
        validate_nm(model, pruned)


def test_validate_nm_rejects_wrong_group_counts_and_shapes():
    model, pruned = sparse_model()
    dense_mask = torch.ones(8, 8, dtype=torch.bool)
    with pytest.raises(MaskValidationError, match="do not keep exactly 2"):
        validate_nm(model, Pruned(model, {"0": dense_mask}, pattern=P24))
    with pytest.raises(MaskValidationError, match="does not fit"):
        validate_nm(model, Pruned(model, {"0": dense_mask[:4]}, pattern=P24))
    with pytest.raises(MaskValidationError, match="not a weighted module"):
        validate_nm(model, Pruned(model, {"nope": dense_mask}, pattern=P24))


def test_validate_nm_rejects_pattern_without_masks():
    model, _ = sparse_model()
    with pytest.raises(MaskValidationError, match="no layer has a mask"):
        validate_nm(model, Pruned(model, pattern=P24))
    assert validate_nm(model, Pruned(model)) == 0.0


@pytest.mark.parametrize("n,m", list(itertools.product([1, 2, 3], [4, 8])))
def test_masks_validate_for_several_patterns(n, m):
    pattern = NMPattern(n, m)
    model = nn.Sequential(nn.Conv2d(16, 8, 3), nn.Linear(16, 8))
    attach(model, {"0": model[0], "1": model[1]}, pattern, mode="fixed")
    pruned = Pruned(model, finalize(model), pattern=pattern)
    assert validate_nm(model, pruned) == pytest.approx(1 - n / m)
