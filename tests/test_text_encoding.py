"""Encoding with clip skip, recombination into 77/152/227 states, weights, gradients, dtypes, on
tiny random CLIP text models over the real vocabulary."""

from __future__ import annotations

import warnings

import pytest
import torch

from engine.models.text_encoding import (
    PromptEncoder,
    TokenBatch,
    encode_prompts_for_sampling,
    recombine,
)
from tests.text_helpers import a_caption, tiny_text_encoder, tokenizer


@pytest.fixture(scope="module")
def sd1_te():
    return tiny_text_encoder(v2=False, layers=3)


@pytest.fixture(scope="module")
def sd2_te():
    return tiny_text_encoder(v2=True, layers=3)


def encoder(te, v2=False, **kw):
    kw.setdefault("warn", lambda message: None)
    return PromptEncoder(tokenizer(v2), te, v2=v2, **kw)


def test_clip_skip_1_is_last_hidden_state(sd1_te):
    enc = encoder(sd1_te)
    tokens = enc.tokenize(["a photo of a cat", "1girl, solo"])
    with torch.no_grad():
        expected = sd1_te(tokens.ids[:, 0]).last_hidden_state
        got = enc.encode(tokens, "cpu")
    assert got.shape == (2, 77, 32)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("skip", [2, 3])
def test_clip_skip_k_is_normed_hidden_state(sd1_te, skip):
    enc = encoder(sd1_te, clip_skip=skip)
    tokens = enc.tokenize(["a photo of a cat"])
    with torch.no_grad():
        hidden = sd1_te(tokens.ids[:, 0], output_hidden_states=True).hidden_states
        expected = sd1_te.final_layer_norm(hidden[-skip])
        got = enc.encode(tokens, "cpu")
        last = encoder(sd1_te).encode(tokens, "cpu")
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, last)


@pytest.mark.parametrize("v2, te_name, width", [(False, "sd1_te", 32), (True, "sd2_te", 48)])
@pytest.mark.parametrize("N", [150, 225])
def test_recombined_positions_come_from_the_right_chunks(request, v2, te_name, width, N):
    te = request.getfixturevalue(te_name)
    enc = encoder(te, v2=v2, max_token_length=N)
    chunks = N // 75
    # different words in each chunk, so a position taken from the wrong chunk shows
    caption = " ".join([a_caption(75), " ".join(["b"] * 75), "c c c"])
    tokens = enc.tokenize([caption, "short"])
    with torch.no_grad():
        per_chunk = [te(tokens.ids[:, j]).last_hidden_state for j in range(chunks)]
        got = enc.encode(tokens, "cpu")
    assert got.shape == (2, 75 * chunks + 2, width)
    torch.testing.assert_close(got[:, 0], per_chunk[0][:, 0])              # BOS of chunk 0
    for j in range(chunks):
        torch.testing.assert_close(got[:, 1 + 75 * j : 76 + 75 * j], per_chunk[j][:, 1:76])
    torch.testing.assert_close(got[:, -1], per_chunk[-1][:, 76])            # last chunk's end


def test_recombine_layout_on_indices():
    positions = torch.arange(3 * 77).unsqueeze(0)
    kept = recombine(positions, 3)[0].tolist()
    assert kept == [0] + list(range(1, 76)) + list(range(78, 153)) + list(range(155, 230)) + [230]
    assert recombine(positions[:, :77], 1).shape == (1, 77)


def test_each_chunk_is_encoded_alone(sd1_te):
    """Chunks do not attend to each other: changing chunk 1 leaves chunk 0's states alone."""
    enc = encoder(sd1_te, max_token_length=150)
    with torch.no_grad():
        one = enc([a_caption(75) + " b b"], "cpu")
        two = enc([a_caption(75) + " c c c"], "cpu")
    torch.testing.assert_close(one[:, :76], two[:, :76])
    assert not torch.allclose(one[:, 76:], two[:, 76:])


def test_weights_scale_the_weighted_positions(sd1_te):
    plain = encoder(sd1_te, max_token_length=150)
    weighted = encoder(sd1_te, max_token_length=150, weighted=True)
    with torch.no_grad():
        base = plain([a_caption(79) + " b c"], "cpu")
        got = weighted([a_caption(79) + " (b:3) [c]"], "cpu")
    # tokens 80 ("b") and 81 ("c") sit at positions 80 and 81 of the 152 layout
    torch.testing.assert_close(got[:, 80], base[:, 80] * 3)
    torch.testing.assert_close(got[:, 81], base[:, 81] / 1.1)
    keep = [i for i in range(152) if i not in (80, 81)]
    torch.testing.assert_close(got[:, keep], base[:, keep])


def test_mean_normalisation_keeps_the_mean(sd1_te):
    plain = encoder(sd1_te)
    weighted = encoder(sd1_te, weighted=True, weight_normalization="mean")
    with torch.no_grad():
        base = plain(["a photo of a cat", "x"], "cpu")
        got = weighted(["a photo of (a cat:1.8)", "(x:0.5)"], "cpu")
    torch.testing.assert_close(got.mean(dim=(1, 2)), base.mean(dim=(1, 2)))
    assert not torch.allclose(got, base)


@pytest.mark.parametrize("skip", [1, 2])
def test_gradient_reaches_a_training_text_encoder(skip):
    te = tiny_text_encoder(layers=3).train()
    enc = encoder(te, clip_skip=skip, max_token_length=150)
    states = enc(["a photo of a cat", a_caption(100)], "cpu")
    assert states.requires_grad
    states.square().mean().backward()
    assert te.embeddings.token_embedding.weight.grad.abs().sum() > 0
    assert te.final_layer_norm.weight.grad.abs().sum() > 0
    if skip == 2:  # the last layer is skipped: it gets no gradient
        assert te.encoder.layers[-1].mlp.fc1.weight.grad is None


def test_frozen_encoder_builds_no_graph(sd1_te):
    for p in sd1_te.parameters():
        p.requires_grad_(False)
    try:
        states = encoder(sd1_te)(["a cat"], "cpu")
        assert not states.requires_grad
    finally:
        for p in sd1_te.parameters():
            p.requires_grad_(True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_output_dtype(sd1_te, dtype):
    with torch.no_grad():
        assert encoder(sd1_te)(["a cat"], "cpu", dtype).dtype == dtype
        assert encoder(sd1_te, clip_skip=2)(["a cat"], "cpu").dtype == torch.float32


def test_low_precision_encoder_and_autocast():
    te = tiny_text_encoder(layers=2).to(torch.bfloat16)
    with torch.no_grad():
        assert encoder(te, clip_skip=2, weighted=True)(["a (cat)"], "cpu").dtype == torch.bfloat16
    te32 = tiny_text_encoder(layers=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(te32, max_token_length=150)(["a cat"], "cpu", torch.float32)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_sd2_clip_skip_warns(sd2_te):
    messages = []
    PromptEncoder(tokenizer(True), sd2_te, v2=True, clip_skip=2, warn=messages.append)
    assert len(messages) == 1 and "23 of 24" in messages[0]
    with pytest.warns(UserWarning, match="SD2"):
        PromptEncoder(tokenizer(True), sd2_te, v2=True, clip_skip=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PromptEncoder(tokenizer(True), sd2_te, v2=True, clip_skip=1)
        PromptEncoder(tokenizer(False), sd2_te, v2=False, clip_skip=2)


def test_bad_settings_are_explained(sd1_te):
    with pytest.raises(ValueError, match="only 3 layers"):
        PromptEncoder(tokenizer(), sd1_te, clip_skip=4)
    with pytest.raises(ValueError, match="clip_skip"):
        PromptEncoder(tokenizer(), sd1_te, clip_skip=0)
    with pytest.raises(ValueError, match="150 or 225"):
        PromptEncoder(tokenizer(), sd1_te, max_token_length=77)
    with pytest.raises(ValueError, match="mean"):
        PromptEncoder(tokenizer(), sd1_te, weight_normalization="l2")


def test_token_batch_round_trip(sd1_te):
    enc = encoder(sd1_te, max_token_length=225)
    tokens = enc.tokenize(["a", "b"])
    assert isinstance(tokens, TokenBatch) and len(tokens) == 2
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(tokens, "cpu"), enc(["a", "b"], "cpu"))


@pytest.mark.parametrize("v2, te_name", [(False, "sd1_te"), (True, "sd2_te")])
def test_sampling_uses_the_training_encoding(request, v2, te_name):
    te = request.getfixturevalue(te_name)
    enc = encoder(te, v2=v2, max_token_length=225, clip_skip=2)
    prompts = ["a photo of a cat", a_caption(160)]
    cond, uncond = encode_prompts_for_sampling(enc, prompts, ["blurry", None], "cpu", torch.float32)
    assert cond.shape == uncond.shape == (2, 227, te.config.hidden_size)
    assert not cond.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(cond, enc(prompts, "cpu"))
        torch.testing.assert_close(uncond[1], enc([""], "cpu")[0])
        torch.testing.assert_close(uncond[0], enc(["blurry"], "cpu")[0])
    cond, uncond = encode_prompts_for_sampling(enc, ["x"], None, "cpu")
    assert cond.shape == uncond.shape
    with pytest.raises(ValueError, match="negative"):
        encode_prompts_for_sampling(enc, ["x", "y"], ["z"], "cpu")
