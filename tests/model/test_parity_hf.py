"""Parity with Hugging Face transformers' GptOssForCausalLM on the same random checkpoint.

Tolerance: fp32 logits agree within 1e-4 absolute (logits are O(10); the observed gap is ~5e-6,
summation order only). Greedy generation gives the same tokens.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers  # the test extra: a collection-time skip would escape the CI skip policy
from gptoss_agent.model import LocalEngine, Sampling
from gptoss_agent.model.config import PRESETS
from gptoss_agent.model.random_checkpoint import write_random_checkpoint

VOCAB = 1024
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["mxfp4", "bf16"])
def pair(request, tmp_path_factory):
    """(our engine, HF model) over one HF-format checkpoint, both in fp32."""
    cfg = replace(PRESETS["tiny"].with_layers(2), vocab_size=VOCAB)
    path = write_random_checkpoint(
        tmp_path_factory.mktemp("hf") / request.param, cfg, format="hf", mxfp4=request.param == "mxfp4"
    )
    ours = LocalEngine.from_checkpoint(path, device="cpu", dtype="fp32")
    theirs = transformers.GptOssForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    theirs.eval()
    return ours, theirs


@pytest.mark.parametrize("length", [7, 128, 129, 300])
def test_logits_match_transformers(pair, length):
    ours, theirs = pair
    ids = torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        expected = theirs(ids[None]).logits[0]
    got = ours.model(ids)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero tensors
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_greedy_generation_matches_transformers(pair):
    ours, theirs = pair
    ids = torch.randint(0, VOCAB, (120,), generator=torch.Generator().manual_seed(7))
    n = 16  # decoding crosses the 128-token window
    with torch.no_grad():
        out = theirs.generate(ids[None], max_new_tokens=n, do_sample=False, pad_token_id=0)
    expected = out[0, len(ids) :].tolist()
    got = list(ours.generate(ids.tolist(), sampling=Sampling(temperature=0.0), max_tokens=n))
    assert got == expected
