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


def sliding_cache(window: int = 4, keep: int = 6, after: int = 2) -> tuple[KVCache, LayerCache]:
    layers = [LayerCache(1, 2, keep=k, dtype=torch.float32, device=torch.device("cpu")) for k in (keep, None)]
    cache = KVCache(layers, [window, None])
    layers[0].after = after
    return cache, layers[0]


def fill(cache: KVCache, start: int, end: int) -> None:
    for p in range(start, end):
        for layer in cache.layers:
            layer.extend(rows(p, 1), rows(p, 1))


def test_an_anchor_keeps_the_rows_around_it_restorable():
    cache, sliding = sliding_cache()
    cache.anchor(10)
    fill(cache, 0, 40)
    assert sliding.start > 10  # the live rows moved on
    assert [p for p, _, _ in sliding.pieces] == [7]  # rows 7..11 (window - 1 before, after = 2)
    assert sliding.snapshot_bytes() == 5 * 2 * 2 * 4
    for end in (10, 11, 12):
        assert cache.restorable(end)
    assert not cache.restorable(13) and not cache.restorable(9)
    assert cache.best_restorable(30) == 12  # the furthest restorable point short of 30
    assert cache.truncate(11)
    assert cache.length == 11
    k, _, start = sliding.extend(rows(11, 1), rows(11, 1))
    assert start == 8 and k[:, 0, 0].tolist() == [8, 9, 10, 11]  # the window before 11, restored
    assert [(p, k.shape[0]) for p, k, _ in sliding.pieces] == [(7, 1)]  # below the live rows
    assert cache.anchors == [10]


@torch.inference_mode()  # as in the model, where copies are made
def test_snapshots_are_bounded_and_copies_share_them():
    cache, sliding = sliding_cache()
    sliding.max_snapshot_rows = 8
    for a in (5, 15, 25, 35):
        cache.anchor(a)
    fill(cache, 0, 60)
    assert sum(k.shape[0] for _, k, _ in sliding.pieces) <= 8  # the oldest went first
    assert cache.restorable(35) and not cache.restorable(5)
    other, _ = sliding_cache()
    other.copy_prefix(cache, 36)
    assert other.length == 36 and other.restorable(35)
    k, _, start = other.layers[0].extend(rows(36, 1), rows(36, 1))
    assert k[:, 0, 0].tolist() == list(range(start, 37))  # every row it returns is the right one
    assert start <= 33
    assert other.layers[0].pieces[0][1].data_ptr() == sliding.pieces[0][1].data_ptr()  # shared


def test_a_strong_anchor_outlives_newer_weak_ones():
    cache, sliding = sliding_cache()
    sliding.max_snapshot_rows = 10  # two anchors' worth
    cache.anchor(5, strong=True)  # where a generation began
    for a in (15, 25, 35, 45):  # message starts further on
        cache.anchor(a)
    fill(cache, 0, 80)
    assert cache.restorable(5) and cache.restorable(45)
    assert not cache.restorable(15) and not cache.restorable(25)
    assert cache.truncate(6) and cache.strong == {5} and cache.anchors == [5]
