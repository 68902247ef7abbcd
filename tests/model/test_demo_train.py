"""The demo model's training code stays alive: a short run on a small model, and the loss falls.

The model is cut down (2 layers, hidden 64) so that CI's two cores run ~60 steps in well under a
minute; the data, the shared-prefix batching, the compact vocabulary and the optimiser are the
real ones.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from gptoss_agent.model.demo.train import (
    DEMO_CONFIG,
    DemoModel,
    TrainConfig,
    lookup_targets,
    mxfp4_round,
    train,
)

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}


def test_training_lowers_the_loss_and_writes_a_resumable_state(tmp_path):
    lines: list[str] = []
    cfg = TrainConfig(
        minutes=5.0, max_steps=60, log_every=15, lr=1e-2, warmup_steps=5, batch_tokens=1024, max_items=12,
        model=SMALL, qat_from=0.0, threads=2, capacity=4096,
    )  # fmt: skip
    state = train(tmp_path / "run", cfg, log=lines.append)
    losses = [float(m.group(1)) for line in lines if (m := re.search(r"loss python ([\d.]+)", line))]
    assert len(losses) == 4, lines
    assert losses[0] > 6.0  # about log(201088) at the start: the whole vocabulary is in the softmax
    assert losses[-1] < losses[0] - 3.0, losses
    saved = torch.load(state, weights_only=False)
    assert saved["step"] == 60
    assert saved["model_config"]["hidden_size"] == 64
    assert len(saved["vocab"]) > 1000  # the base ids (digits, ASCII, harmony's specials) and the data's
    # resuming continues the same schedule
    more = TrainConfig(**{**cfg.__dict__, "max_steps": 65})
    train(tmp_path / "run", more, log=lines.append)
    assert any("resumed" in line and "continues" in line for line in lines)
    assert torch.load(state, weights_only=False)["step"] == 65


def test_the_built_in_copy_circuit_copies_before_any_training():
    """A random sequence seen once is continued from its first copy: without the circuit no token is."""
    g = torch.Generator().manual_seed(0)
    vocab = 1200
    first = torch.randint(10, vocab, (8, 30), generator=g)
    seq = torch.cat([first, torch.randint(10, vocab, (8, 17), generator=g), first], 1)
    accuracy = {}
    for built_in in (False, True):
        model = DemoModel(DEMO_CONFIG, vocab)
        if built_in:
            model.init_copy_circuit()
        with torch.no_grad():
            logits = model.logits(model(None, seq[:, :-1]))[:, 47:, :vocab]  # predicting the 2nd copy, from its 2nd token
        accuracy[built_in] = (logits.argmax(-1) == seq[:, 48:]).float().mean().item()
        if built_in:
            assert F.cross_entropy(logits.reshape(-1, vocab), seq[:, 48:].reshape(-1)) < 6.8  # log(1190) = 7.08
    assert accuracy[False] < 0.05 and accuracy[True] > 0.25, accuracy


def test_the_demo_config_is_gpt_oss_at_toy_size():
    cfg = DEMO_CONFIG
    assert cfg.num_experts >= 4 and cfg.experts_per_token == 2
    assert cfg.layer_types[0] == "sliding_attention" and cfg.layer_types[1] == "full_attention"
    assert cfg.vocab_size == 201088 and cfg.rope_scaling_factor == 32.0


def test_mxfp4_rounding_keeps_codes_and_scales_exact():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 64, generator=g) * 0.05
    q = mxfp4_round(w)
    blocks = q.view(3, 2, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 6.0  # the largest value of a block is 6 x its scale or less
    ratio = blocks / torch.exp2(torch.ceil(torch.log2(w.view(3, 2, 32).abs().amax(-1, keepdim=True) / 6.0)))
    assert torch.all(scale > 0)
    allowed = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    assert torch.isin(ratio.abs(), allowed).all()
    assert (q - w).abs().max() < w.abs().max() / 4  # rounding, not garbage


def test_lookup_targets_mark_the_first_token_of_each_copy_only():
    # prefix [1, 2] (system), then the user's number 7 8 9 after 5; the target writes 6 7 8 9 1 3
    context = [1, 2, 5, 7, 8, 9]
    target = [6, 7, 8, 9, 1, 3]
    # 6: never in the conversation; 7: in it but after 5 there, after 6 here -> a lookup;
    # 8, 9: follow what they follow in the context (induction); 1: only in the system prefix; 3: new
    assert lookup_targets(context, target, start=2) == [False, True, False, False, False, False]
    # the first target token is judged against the context's last token: 9 -> 7 is not in the context
    assert lookup_targets([5, 9], [7], start=0) == [False]
    assert lookup_targets([5, 7, 9], [7], start=0) == [True]
    assert lookup_targets([9, 7, 9], [7], start=0) == [False]
