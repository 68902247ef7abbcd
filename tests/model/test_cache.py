"""The KV cache's bookkeeping: sliding layers drop old rows in bulk and still roll back correctly."""

import torch
from gptoss_agent.model.cache import KVCache, LayerCache


def rows(start: int, n: int) -> torch.Tensor:
    """Keys whose every value is their position: what a row holds says where it came from."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None, None].expand(n, 1, 2).clone()


def test_sliding_layer_returns_every_visible_position_and_stays_bounded():
    window, keep = 4, 6
    layer = LayerCache(1, 2, keep=keep, dtype=torch.float32, device=torch.device("cpu"))
    for pos, n in [(0, 3), (3, 1), (4, 9), *((p, 1) for p in range(13, 60))]:
        k, _, start = layer.extend(rows(pos, n), rows(pos, n))
        positions = k[:, 0, 0]
        assert torch.equal(positions, torch.arange(start, pos + n, dtype=torch.float32))
        assert start <= max(0, pos - window + 1)  # the first new query sees its whole window
        assert layer._k.shape[0] <= keep + 9  # bounded, never one copy per step
    assert layer.length >= keep


def test_rollback_after_a_bulk_drop():
    window, keep = 4, 6
    layers = [LayerCache(1, 2, keep=k, dtype=torch.float32, device=torch.device("cpu")) for k in (keep, None)]
    cache = KVCache(layers, [window, None])
    for p in range(40):
        for layer in layers:
            layer.extend(rows(p, 1), rows(p, 1))
    assert cache.length == 40
    assert cache.truncate(38)  # within the margin: possible
    k, _, start = layers[0].extend(rows(38, 1), rows(38, 1))
    assert k[-1, 0, 0] == 38 and k[0, 0, 0] == start and start <= 35
    assert not cache.truncate(10)  # the sliding layer dropped what position 10 needs
    assert cache.length == 39
