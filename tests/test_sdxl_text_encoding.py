"""SDXL token layouts, hidden states and pooled output, against kohya's formulas computed
with transformers directly and against diffusers' own SDXL prompt encoding (docs/sdxl.md)."""

from __future__ import annotations

import pytest
import torch

from engine.families.sdxl.text_encoding import SdxlPromptEncoder
from engine.families.sdxl.tokens import TE1_PAD_ID, TE2_PAD_ID, sdxl_token_layout, tokenize_sdxl
from engine.models.tokenizer import BOS_ID, EOS_ID

T = list(range(1000, 1300))   # stand-in text ids


# ------------------------------------------------------------------ token layouts, by hand


def test_short_caption_at_75_pads_each_encoder_its_own_way():
    layout = sdxl_token_layout(T[:3], 75)
    assert layout.te1 == [[BOS_ID, *T[:3], EOS_ID] + [EOS_ID] * 72]
    assert layout.te2 == [[BOS_ID, *T[:3], EOS_ID] + [0] * 72]
    assert (TE1_PAD_ID, TE2_PAD_ID) == (EOS_ID, 0)


def test_long_caption_is_truncated_at_75():
    layout = sdxl_token_layout(T[:80], 75)
    assert layout.te1 == [[BOS_ID, *T[:75], EOS_ID]] and layout.te2 == layout.te1
    assert layout.text_tokens == 80


def test_exactly_75_tokens_at_150():
    layout = sdxl_token_layout(T[:75], 150)
    assert layout.te1 == [[BOS_ID, *T[:75], EOS_ID], [BOS_ID] + [EOS_ID] * 76]
    # "!" padding: the full first chunk gets its EOS, the empty second one starts with EOS
    assert layout.te2 == [[BOS_ID, *T[:75], EOS_ID], [BOS_ID, EOS_ID] + [0] * 75]


def test_100_tokens_at_225():
    layout = sdxl_token_layout(T[:100], 225)
    assert layout.te1 == [
        [BOS_ID, *T[:75], EOS_ID],
        [BOS_ID, *T[75:100], EOS_ID] + [EOS_ID] * 50,
        [BOS_ID] + [EOS_ID] * 76,
    ]
    assert layout.te2 == [
        [BOS_ID, *T[:75], EOS_ID],
        [BOS_ID, *T[75:100], EOS_ID] + [0] * 50,
        [BOS_ID, EOS_ID] + [0] * 75,
    ]


def test_unsupported_length_is_refused_with_the_key():
    with pytest.raises(ValueError, match="max_token_length"):
        sdxl_token_layout(T[:3], 100)


# ------------------------------------------- token layouts, against kohya's tokenizer call


def _kohya_chunks(tokenizer, caption, max_token_length, pad):
    """kohya's _get_input_ids, from its published rule: tokenizer(padding="max_length",
    truncation=True, max_length=N + 2), then chunks [ids[0]] + ids[i:i+75] + [ids[-1]] for
    i = 1, 76, 151; with pad != EOS a chunk ending "x PAD" ends in EOS and "BOS PAD" becomes
    "BOS EOS"."""
    tokenizer.pad_token_id = pad  # kohya forces bigG's pad to 0; ViT-L's is EOS already
    ids = tokenizer(caption, padding="max_length", truncation=True, max_length=max_token_length + 2).input_ids
    if max_token_length == 75:
        return [ids]
    chunks = []
    for i in range(1, max_token_length + 1, 75):
        chunk = [ids[0], *ids[i : i + 75], ids[-1]]
        if pad != EOS_ID:
            if chunk[-2] not in (EOS_ID, pad):
                chunk[-1] = EOS_ID
            if chunk[1] == pad:
                chunk[1] = EOS_ID
        chunks.append(chunk)
    return chunks


CAPTIONS = [
    "",
    "1girl, solo, smile",
    ", ".join(f"tag{i}" for i in range(40)),     # 149 tokens
    ", ".join(f"word{i}" for i in range(90)),    # 349 tokens, truncated at 225
]


@pytest.mark.parametrize("max_token_length", [75, 150, 225])
def test_layouts_match_kohya_s_tokenizer_call(max_token_length):
    from engine.models.tokenizer import build_clip_tokenizer

    tok1, tok2 = build_clip_tokenizer(v2=False), build_clip_tokenizer(v2=True)
    for caption, layout in zip(CAPTIONS, tokenize_sdxl(CAPTIONS, max_token_length), strict=True):
        assert layout.te1 == _kohya_chunks(tok1, caption, max_token_length, EOS_ID), caption
        assert layout.te2 == _kohya_chunks(tok2, caption, max_token_length, 0), caption


# ------------------------------------------------------------ hidden states and pooled


@pytest.fixture(scope="module")
def encoders():
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    parts = build_tiny_sdxl_components(TinySdxlSpec(seed=3))
    return parts["text_encoder"].eval(), parts["text_encoder_2"].eval()


def _kohya_encode(te1, te2, ids1, ids2):
    """kohya's _get_hidden_states_sdxl written with transformers directly."""
    b, n, _ = ids1.shape
    out1 = te1(ids1.reshape(-1, 77), output_hidden_states=True)
    out2 = te2(ids2.reshape(-1, 77), output_hidden_states=True)
    h1 = out1.hidden_states[11].reshape(b, n * 77, -1)
    h2 = out2.hidden_states[-2].reshape(b, n * 77, -1)
    flat2 = ids2.reshape(-1, 77)
    eos = (flat2 == EOS_ID).int().argmax(dim=1)
    pool = te2.text_projection(out2.last_hidden_state[torch.arange(flat2.shape[0]), eos])
    if n > 1:
        def stitch(h):
            return torch.cat([h[:, :1]] + [h[:, 1 + 77 * j : 76 + 77 * j] for j in range(n)] + [h[:, -1:]], dim=1)

        h1, h2, pool = stitch(h1), stitch(h2), pool[::n]
    return h1, h2, pool


@pytest.mark.parametrize("max_token_length", [75, 150, 225])
def test_states_and_pooled_equal_kohya_s_formulas(encoders, max_token_length):
    te1, te2 = encoders
    encoder = SdxlPromptEncoder(te1, te2, max_token_length=max_token_length)
    with torch.no_grad():
        tokens = encoder.tokenize(CAPTIONS)
        ours = encoder.encode(tokens, "cpu")
        h1, h2, pool = _kohya_encode(te1, te2, tokens.ids1, tokens.ids2)
    length = 77 if max_token_length == 75 else max_token_length + 2
    width = te1.config.hidden_size + te2.config.hidden_size
    assert ours.states.shape == (len(CAPTIONS), length, width)
    assert ours.pooled.shape == (len(CAPTIONS), te2.config.projection_dim)
    torch.testing.assert_close(ours.states1, h1, rtol=0, atol=0)
    torch.testing.assert_close(ours.states2, h2, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pool, rtol=0, atol=0)
    torch.testing.assert_close(ours.states, torch.cat([h1, h2], dim=2), rtol=0, atol=0)


def test_pooled_comes_from_the_first_chunk_and_states_from_all(encoders):
    te1, te2 = encoders
    encoder = SdxlPromptEncoder(te1, te2, max_token_length=150)
    head = ", ".join(f"tag{i}" for i in range(30))
    assert 75 < encoder.tokenize([head]).token_counts[0] < 140   # the ending lands in chunk 2
    with torch.no_grad():
        a = encoder([head + ", red hair"], "cpu")
        b = encoder([head + ", blue eyes"], "cpu")
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)
    assert not torch.equal(a.states, b.states)


def test_75_tokens_equal_diffusers_sdxl_prompt_encoding(encoders):
    from diffusers import StableDiffusionXLPipeline
    from sdxl_helpers import tiny_sdxl_parts

    parts = tiny_sdxl_parts(1)   # encoding only reads the parts
    pipe = StableDiffusionXLPipeline(**parts)
    prompts = ["1girl, solo, smile", "a photo of a cat"]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
        ours = SdxlPromptEncoder(parts["text_encoder"], parts["text_encoder_2"])(prompts, "cpu")
    torch.testing.assert_close(ours.states, embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=1e-6)


def test_dtype_is_applied_to_every_output(encoders):
    te1, te2 = encoders
    with torch.no_grad():
        out = SdxlPromptEncoder(te1, te2)(["a cat"], "cpu", torch.bfloat16)
    assert out.states1.dtype == out.states2.dtype == out.pooled.dtype == torch.bfloat16


def test_encoders_that_are_not_sdxl_s_are_refused(encoders):
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.families.sdxl.tiny import TinySdxlSpec, tiny_te1_config

    te1, te2 = encoders
    short = CLIPTextModel(CLIPTextConfig(**tiny_te1_config(TinySdxlSpec(te1_layers=2))))
    with pytest.raises(ValueError, match="layer 11"):
        SdxlPromptEncoder(short, te2)
    with pytest.raises(TypeError, match="text projection"):
        SdxlPromptEncoder(te1, te1)


def test_pooled_is_taken_at_eos_even_past_an_added_token():
    # kohya's _pool_workaround: a textual-inversion token has an id above EOS, where CLIP's
    # own argmax-of-ids pooling would pick it instead of the EOS.
    from engine.families.sdxl.text_encoding import pooled_at_eos
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    te2 = build_tiny_sdxl_components(TinySdxlSpec(seed=4))["text_encoder_2"].eval()
    te2.resize_token_embeddings(EOS_ID + 2)
    ids = torch.tensor([[BOS_ID, 320, EOS_ID + 1, EOS_ID] + [0] * 73])
    with torch.no_grad():
        last = te2(ids).last_hidden_state
        pooled = pooled_at_eos(te2, last, ids)
        torch.testing.assert_close(pooled, te2.text_projection(last[:, 3]), rtol=0, atol=0)
        assert not torch.allclose(pooled, te2.text_projection(last[:, 2]))
