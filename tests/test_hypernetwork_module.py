"""Hypernetwork module, U-Net hook and files, on tiny models and real configs (meta)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from engine.models.hypernetwork import (  # noqa: E402
    WIDTHS,
    Hypernetwork,
    HypernetworkAttnProcessor,
    HypernetworkError,
    HypernetworkModule,
    hypernetwork_for_unet,
    install_hypernetwork,
    load_hypernetwork,
    remove_hypernetwork,
    save_hypernetwork,
    unet_kv_widths,
)


@pytest.fixture(scope="module")
def tiny_unet():
    from engine.models.tiny import TinySpec, build_tiny_components

    return build_tiny_components(TinySpec("sd1"))["unet"].eval()


def unet_inputs(context_width: int = 32):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 77, context_width, generator=g))


def randomise(hn: Hypernetwork, seed: int = 5, scale: float = 0.2) -> None:
    """Larger, distinct weights so f_0 and f_1 differ clearly from each other and from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---------------------------------------------------------------- the module

def test_module_shapes_init_and_residual_form():
    m = HypernetworkModule(320, torch.Generator().manual_seed(0))
    sd = m.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "linear.0.weight": (640, 320), "linear.0.bias": (640,),
        "linear.1.weight": (320, 640), "linear.1.bias": (320,)}
    assert sd["linear.0.bias"].abs().sum() == 0 and sd["linear.1.bias"].abs().sum() == 0
    assert 0.008 < sd["linear.0.weight"].std() < 0.012            # N(0, 0.01)
    x = torch.randn(3, 7, 320)
    w1, b1, w2, b2 = (sd[k] for k in ("linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"))
    expected = x + 0.5 * ((x @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(m(x, 0.5), expected)


def test_real_size_parameter_counts_match_the_planner():
    from engine.plan import hypernetwork_params

    for family in ("sd1", "sd2"):
        with torch.device("meta"):
            hn = Hypernetwork(WIDTHS[family])
        assert sum(p.numel() for p in hn.parameters()) == hypernetwork_params(family)
        assert hn.widths == WIDTHS[family]


@pytest.mark.parametrize("family,expected", [("sd1", (320, 640, 768, 1280)), ("sd2-base", (320, 640, 1024, 1280)),
                                             ("sd2-768-v", (320, 640, 1024, 1280))])
def test_widths_of_real_size_unets(family, expected):
    from accelerate import init_empty_weights

    from engine.models.configs import builtin_config
    from engine.models.load import unet_ctor

    with init_empty_weights():
        unet = unet_ctor(builtin_config(family, "unet"))()
    assert unet_kv_widths(unet) == expected


def test_tiny_widths_come_from_the_unet(tiny_unet, tiny_sd2):
    from diffusers import UNet2DConditionModel

    assert unet_kv_widths(tiny_unet) == (32, 64)            # channels 32/64, text width 32
    sd2 = UNet2DConditionModel.from_pretrained(tiny_sd2, subfolder="unet")
    assert unet_kv_widths(sd2) == (32, 48, 64)               # text width 48 stands in for 1024
    assert hypernetwork_for_unet(sd2, seed=1).widths == (32, 48, 64)


# ---------------------------------------------------------------- the hook

def test_zero_mlp_output_leaves_the_unet_unchanged(tiny_unet):
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        base = tiny_unet(x, t, ctx).sample
        hn = hypernetwork_for_unet(tiny_unet, seed=0)
        randomise(hn)
        install_hypernetwork(tiny_unet, hn)
        try:
            changed = tiny_unet(x, t, ctx).sample
            for pair in hn.pairs.values():            # the MLPs' output forced to zero
                for module in pair:
                    module.linear[1].weight.zero_()
                    module.linear[1].bias.zero_()
            zeroed = tiny_unet(x, t, ctx).sample
        finally:
            remove_hypernetwork(tiny_unet)
        after = tiny_unet(x, t, ctx).sample
    assert not torch.allclose(changed, base, atol=1e-4)
    assert torch.equal(zeroed, base)
    assert torch.equal(after, base)
    assert not any(isinstance(p, HypernetworkAttnProcessor) for p in tiny_unet.attn_processors.values())


def reference_attention(attn, hidden, context, hn):
    """Attention written out by hand: Q from the hidden states, K = to_k(f_0(kv)), V = to_v(f_1(kv))."""
    kv = hidden if context is None else context
    q = attn.to_q(hidden)
    k = attn.to_k(hn.transform(kv, 0))
    v = attn.to_v(hn.transform(kv, 1))
    b, heads = hidden.shape[0], attn.heads

    def split(t):
        return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(b, -1, heads * q.shape[-1])
    return attn.to_out[0](out)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_processor_applies_f0_to_keys_and_f1_to_values(cross, kernel):
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=48 if cross else None, heads=4, dim_head=8).eval()
    attn.set_processor(AttnProcessor2_0() if kernel == "sdpa" else AttnProcessor())
    hn = Hypernetwork((32, 48), generator=torch.Generator().manual_seed(1))
    randomise(hn)
    hidden = torch.randn(2, 16, 32)
    context = torch.randn(2, 77, 48) if cross else None
    with torch.no_grad():
        plain = attn(hidden, context)
        attn.set_processor(HypernetworkAttnProcessor(attn.processor, hn))
        hooked = attn(hidden, context)
        expected = reference_attention(attn, hidden, context, hn)
    torch.testing.assert_close(hooked, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(hooked, plain, atol=1e-3)


def test_sdpa_and_plain_attention_agree_with_a_hypernetwork(tiny_unet):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    x, t, ctx = unet_inputs()
    hn = hypernetwork_for_unet(tiny_unet, seed=0)
    randomise(hn)
    outputs = []
    try:
        for processor in (AttnProcessor2_0(), AttnProcessor()):
            tiny_unet.set_attn_processor(processor)
            install_hypernetwork(tiny_unet, hn)
            with torch.no_grad():
                outputs.append(tiny_unet(x, t, ctx).sample)
    finally:
        tiny_unet.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)


def test_gradient_reaches_only_the_hypernetwork_through_a_frozen_unet(tiny_unet):
    x, t, ctx = unet_inputs()
    hn = hypernetwork_for_unet(tiny_unet, seed=0)
    tiny_unet.requires_grad_(False)
    install_hypernetwork(tiny_unet, hn)
    try:
        tiny_unet(x, t, ctx).sample.square().mean().backward()
    finally:
        remove_hypernetwork(tiny_unet)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hn.parameters())
    assert all(p.grad is None for p in tiny_unet.parameters())
    assert not any("pairs" in k for k in tiny_unet.state_dict())     # never part of the U-Net


@pytest.mark.gpu
def test_xformers_and_sdpa_agree_on_cuda(tiny_unet):
    pytest.importorskip("xformers")
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    unet = tiny_unet.to("cuda", torch.float16)
    x, t, ctx = (v.to("cuda") for v in unet_inputs())
    hn = hypernetwork_for_unet(unet, seed=0).to("cuda")
    randomise(hn)
    outputs = []
    try:
        for processor in (AttnProcessor2_0(), XFormersAttnProcessor()):
            unet.set_attn_processor(processor)
            install_hypernetwork(unet, hn)
            with torch.no_grad(), torch.autocast("cuda", torch.float16):
                outputs.append(unet(x.half(), t, ctx.half()).sample.float())
    finally:
        unet.set_attn_processor(AttnProcessor2_0())
        unet.to("cpu", torch.float32)
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- files

def assert_same_weights(a: Hypernetwork, b: Hypernetwork) -> None:
    sa, sb = a.flat_state(), b.flat_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_save_load_round_trip(tmp_path, fmt):
    hn = Hypernetwork((32, 48, 64), name="mine", generator=torch.Generator().manual_seed(2))
    randomise(hn)
    path = save_hypernetwork(tmp_path / f"mine.{fmt}", hn, step=12, sd_checkpoint_name="base-model",
                             metadata={"sdft.version": "test"})
    loaded = load_hypernetwork(path)
    assert_same_weights(hn, loaded)
    assert (loaded.name, loaded.step, loaded.sd_checkpoint_name) == ("mine", 12, "base-model")
    assert path.stat().st_mode & 0o777 == 0o644


def test_pt_file_has_the_a1111_layout(tmp_path):
    hn = Hypernetwork((32, 64), name="a1111", generator=torch.Generator().manual_seed(2))
    path = save_hypernetwork(tmp_path / "a.pt", hn, step=3, sd_checkpoint_name="model")
    data = torch.load(path, weights_only=True)
    assert sorted(k for k in data if isinstance(k, int)) == [32, 64]
    sd_k, sd_v = data[64]
    assert sorted(sd_k) == ["linear.0.bias", "linear.0.weight", "linear.1.bias", "linear.1.weight"]
    assert sd_k["linear.0.weight"].shape == (128, 64) and sd_v["linear.1.weight"].shape == (64, 128)
    assert data["layer_structure"] == [1, 2, 1] and data["activation_func"] == "linear"
    assert data["is_layer_norm"] is False and data["use_dropout"] is False
    assert data["weight_initialization"] == "Normal"
    assert (data["name"], data["step"], data["sd_checkpoint_name"]) == ("a1111", 3, "model")


def test_safetensors_file_has_flat_keys_and_string_metadata(tmp_path):
    from safetensors import safe_open

    hn = Hypernetwork((32,), generator=torch.Generator().manual_seed(2))
    path = save_hypernetwork(tmp_path / "h.safetensors", hn, step=4, metadata={"sdft.version": "x"})
    with safe_open(str(path), framework="pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert keys == {f"32.{i}.linear.{j}.{leaf}" for i in (0, 1) for j in (0, 1) for leaf in ("weight", "bias")}
    assert json.loads(meta["layer_structure"]) == [1, 2, 1] and meta["activation_func"] == "linear"
    assert meta["step"] == "4" and meta["sdft.version"] == "x"


def a1111_pair(width: int, seed: int, names=("linear.0", "linear.1")):
    g = torch.Generator().manual_seed(seed)
    first, second = names
    return tuple({f"{first}.weight": torch.randn(2 * width, width, generator=g),
                  f"{first}.bias": torch.randn(2 * width, generator=g),
                  f"{second}.weight": torch.randn(width, 2 * width, generator=g),
                  f"{second}.bias": torch.randn(width, generator=g)} for _ in range(2))


def test_an_a1111_file_loads(tmp_path):
    data = {width: a1111_pair(width, width) for width in (320, 640, 768, 1280)}
    data.update({"step": 2500, "name": "anime", "layer_structure": [1.0, 2.0, 1.0], "activation_func": "linear",
                 "is_layer_norm": False, "weight_initialization": "Normal", "sd_checkpoint": "925997e9",
                 "sd_checkpoint_name": "nai", "activate_output": False, "use_dropout": False,
                 "dropout_structure": [0.0, 0.0, 0.0], "last_layer_dropout": False, "optional_info": None})
    torch.save(data, tmp_path / "anime.pt")
    hn = load_hypernetwork(tmp_path / "anime.pt")
    assert hn.widths == (320, 640, 768, 1280) and (hn.name, hn.step) == ("anime", 2500)
    module = hn.pairs["768"][1]
    assert torch.equal(module.linear[0].weight, data[768][1]["linear.0.weight"])
    assert torch.equal(module.linear[1].bias, data[768][1]["linear.1.bias"])


def test_novelai_old_names_and_dropout_shifted_indices_load(tmp_path):
    old = {768: a1111_pair(768, 1, ("linear1", "linear2")), 320: a1111_pair(320, 2, ("linear1", "linear2"))}
    torch.save(old, tmp_path / "nai.pt")
    hn = load_hypernetwork(tmp_path / "nai.pt")
    assert hn.widths == (320, 768) and hn.name == "nai"
    assert torch.equal(hn.pairs["768"][0].linear[1].weight, old[768][0]["linear2.weight"])
    shifted = {64: a1111_pair(64, 3, ("linear.0", "linear.2")), "use_dropout": True}   # A1111 with dropout
    torch.save(shifted, tmp_path / "dropout.pt")
    assert torch.equal(load_hypernetwork(tmp_path / "dropout.pt").pairs["64"][0].linear[1].weight,
                       shifted[64][0]["linear.2.weight"])


def test_kohya_pickle_under_a_safetensors_name_loads(tmp_path):
    torch.save({32: a1111_pair(32, 4)}, tmp_path / "kohya.safetensors")
    assert load_hypernetwork(tmp_path / "kohya.safetensors").widths == (32,)


class NotAllowed:
    pass


@pytest.mark.parametrize("extra,words", [
    ({"layer_structure": [1, 1.5, 1]}, "layer_structure"),
    ({"activation_func": "relu"}, "activation_func"),
    ({"is_layer_norm": True}, "layer norm"),
    ({"layer_structure": ["1", "two", "1"]}, "layer_structure"),     # not numbers: no bare ValueError
    ({"layer_structure": 3}, "layer_structure"),                     # not a list: no TypeError
])
def test_unsupported_structures_are_refused_clearly(tmp_path, extra, words):
    torch.save({32: a1111_pair(32, 0), **extra}, tmp_path / "odd.pt")
    with pytest.raises(HypernetworkError, match=words) as info:
        load_hypernetwork(tmp_path / "odd.pt")
    assert "odd.pt" in str(info.value)


def test_unsafe_or_broken_files_are_refused(tmp_path):
    torch.save({32: a1111_pair(32, 0), "extra": NotAllowed()}, tmp_path / "unsafe.pt")
    with pytest.raises(HypernetworkError, match="safely"):
        load_hypernetwork(tmp_path / "unsafe.pt")
    wide = {32: ({"linear.0.weight": torch.zeros(96, 32)}, {})}
    torch.save(wide, tmp_path / "partial.pt")
    with pytest.raises(HypernetworkError, match="two linear layers"):
        load_hypernetwork(tmp_path / "partial.pt")
    with pytest.raises(HypernetworkError, match="does not exist"):
        load_hypernetwork(tmp_path / "missing.pt")


def test_extra_widths_kept_unused_and_missing_ones_created(tmp_path, tiny_unet):
    torch.save({32: a1111_pair(32, 0), 768: a1111_pair(768, 1)}, tmp_path / "mixed.pt")
    warnings = []
    hn = hypernetwork_for_unet(tiny_unet, weights=tmp_path / "mixed.pt", seed=0, warn=warnings.append)
    assert hn.widths == (32, 64)
    assert any("768" in w and "not use" in w for w in warnings) and any("64" in w and "created" in w for w in warnings)
    new = hn.pairs["64"][0]
    assert new.linear[1].bias.abs().sum() == 0            # fresh: N(0, 0.01) weights, zero biases
    assert all(p.shape[-1] != 768 for p in hn.parameters())   # the unused width is not trained
    path = save_hypernetwork(tmp_path / "again.pt", hn)
    assert sorted(k for k in torch.load(path, weights_only=True) if isinstance(k, int)) == [32, 64, 768]
