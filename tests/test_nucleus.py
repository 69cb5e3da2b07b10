"""The sort-free top-p filter gives vLLM's own top-p mask (vLLM's CPU build is installed in the suite)."""

import pytest
import torch

from workers.engines.nucleus import nucleus_mask


def vllm_mask(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    filtered = apply_top_k_top_p_pytorch(logits.clone(), None, p, allow_cpu_sync=True)
    return torch.isinf(filtered) & (filtered < 0)


@pytest.mark.parametrize("temperature", [0.3, 0.9, 1.5])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_the_mask_is_vllms_on_peaked_and_flat_rows(temperature: float, top_p: float) -> None:
    gen = torch.Generator().manual_seed(int(temperature * 100 + top_p * 1000))
    vocab = 4096
    peaked = torch.randn(24, vocab, generator=gen) * 10  # nucleus of a few tokens
    flat = torch.randn(8, vocab, generator=gen) * 0.05  # nucleus of thousands: the fallback path
    logits = torch.cat([peaked, flat]) / temperature
    p = torch.full((logits.shape[0],), top_p)
    ours = nucleus_mask(logits, p, margin=2.0, candidates=64)
    assert torch.equal(ours, vllm_mask(logits, p))
    kept = (~ours).sum(dim=-1)
    assert (kept[:24] < 64).sum() >= 12 and kept[24:].min() > 64  # both paths were exercised


def test_per_row_p_and_rows_without_a_nucleus() -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 1000, generator=gen) * 3
    p = torch.tensor([0.1, 0.5, 0.9, 0.99, 1.0, 0.7])
    ours = nucleus_mask(logits, p, margin=2.0, candidates=32)
    reference = vllm_mask(logits, p)
    assert torch.equal(ours[:4], reference[:4]) and torch.equal(ours[5], reference[5])
    assert not ours[4].any()  # p = 1 keeps every token
    assert (~ours).sum(dim=-1)[0] >= 1  # the highest token is always kept


def test_the_filter_is_installed_into_vllm_on_cpu(monkeypatch) -> None:
    from vllm.v1.sample.ops import topk_topp_sampler as sampler

    from workers.engines import nucleus

    original = sampler.apply_top_k_top_p
    monkeypatch.setattr(sampler, "apply_top_k_top_p", original)
    monkeypatch.delattr(sampler, "_spar_nucleus", raising=False)
    monkeypatch.setenv(nucleus.ENV, "sort")
    nucleus.register()
    assert sampler.apply_top_k_top_p is original  # turned off by the environment
    monkeypatch.delenv(nucleus.ENV)
    nucleus.register()
    patched = sampler.apply_top_k_top_p
    assert patched is not original
    logits = torch.randn(3, 500) * 3
    p = torch.full((3,), 0.9)
    assert torch.equal(torch.isinf(patched(logits.clone(), None, p)), vllm_mask(logits, p))
    k = torch.full((3,), 5)
    assert torch.equal(patched(logits.clone(), k, p), original(logits.clone(), k, p))  # top-k: vLLM's


def test_vllm_loads_the_plugin_from_the_installed_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get("spar_nucleus") == "workers.engines.nucleus:register", names


def test_each_tier_decides_the_rows_it_can_and_only_flat_rows_reach_the_sort(monkeypatch) -> None:
    from workers.engines import nucleus

    sorted_rows: list[int] = []
    original = nucleus._sorted_mask

    def counting(logits, p):
        sorted_rows.append(logits.shape[0])
        return original(logits, p)

    monkeypatch.setattr(nucleus, "_sorted_mask", counting)
    gen = torch.Generator().manual_seed(3)
    vocab = 2000
    peaked = torch.randn(4, vocab, generator=gen) * 10  # nucleus within 2 nats of the top: tier 1
    medium = torch.randn(4, vocab, generator=gen) * 3.5  # reaches below the margin, within 256: tier 2
    flat = torch.randn(2, vocab, generator=gen) * 1.2  # nucleus past both the margin and 256: the sort
    logits = torch.cat([peaked, medium, flat])
    p = torch.full((10,), 0.9)
    ours = nucleus.nucleus_mask(logits, p, margin=2.0, candidates=256)
    assert torch.equal(ours, vllm_mask(logits, p))
    kept = (~ours).sum(dim=-1)
    assert kept[8:].min() > 256 and kept[4:8].max() < 256
    assert sorted_rows == [2]  # only the two flat rows needed the full sort
