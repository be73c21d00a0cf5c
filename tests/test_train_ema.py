"""The EMA warms its decay up, so the saved average tracks the trained weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import make_run

from engine.events import ListSink, Message
from engine.runner import run_training
from engine.train.ema import EMA, EMAStateError, warmup_decay
from engine.train.saves.state import file_sha256, find_latest_state


def test_the_decay_is_diffusers_warm_up_schedule_capped_by_ema_decay():
    from diffusers.training_utils import EMAModel

    reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.9999, use_ema_warmup=True)
    for update in (1, 2, 3, 10, 100, 1600, 10 ** 6, 10 ** 8):
        assert warmup_decay(update, 0.9999) == pytest.approx(reference.get_decay(update), abs=1e-12)
    assert warmup_decay(1, 0.9999) == 0.0              # the average starts at the trained weights
    assert warmup_decay(10 ** 8, 0.9999) == 0.9999     # and the cap holds in the end


class FlatDecayEMA(EMA):
    """The average as sdft kept it before the warm-up: the same decay from the first update."""

    def decay_at(self, step: int) -> float:
        return self.decay


def _train_small_model(steps: int, ema_class=EMA, ema_decay: float = 0.9999):
    """A 256-weight linear model fitted to a fixed target by SGD; returns (initial, live, ema)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16, bias=False)
    initial = model.weight.detach().clone()
    target = torch.randn(16, 16)
    inputs = torch.randn(64, 16)
    ema = ema_class(model.named_parameters(), decay=ema_decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, steps + 1):
        loss = ((model(inputs) - inputs @ target.T) ** 2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(step)
    return initial, model.weight.detach().clone(), ema.state_dict()["weight"]


def test_over_1600_updates_the_average_tracks_the_trained_weights():
    initial, live, average = _train_small_model(1600)
    travelled = (live - initial).norm()
    assert travelled > 1.0                                   # the weights really moved
    assert (average - live).norm() < 0.02 * travelled        # the average is where training went
    assert (average - initial).norm() > 0.98 * travelled     # and nothing like where it started


def test_without_warm_up_the_same_run_keeps_most_of_the_start():
    """The flat decay this replaces: 0.9999 ** 1600, about 85% of the initial weights, stays in."""
    initial, live, average = _train_small_model(1600, ema_class=FlatDecayEMA)
    travelled = (live - initial).norm()
    assert (average - initial).norm() < 0.2 * travelled
    assert (average - live).norm() > 0.8 * travelled


def test_update_every_counts_updates_not_steps():
    ema = EMA([("w", torch.nn.Parameter(torch.zeros(2)))], decay=0.999, update_every=4)
    assert ema.decay_at(4) == 0.0 and ema.decay_at(8) == warmup_decay(2, 0.999)


def test_the_average_is_saved_by_name_and_an_older_positional_state_still_loads():
    params = [("unet.a", torch.nn.Parameter(torch.ones(2))), ("unet.b", torch.nn.Parameter(torch.zeros(3)))]
    ema = EMA(params)
    assert list(ema.state_dict()) == ["unet.a", "unet.b"]
    assert ema.load_state_dict({"unet.a": torch.full((2,), 5.0), "unet.b": torch.ones(3)}) is None
    note = ema.load_state_dict({"0": torch.full((2,), 7.0), "1": torch.ones(3)})
    assert "older sdft" in note and torch.equal(ema.shadow[0], torch.full((2,), 7.0))
    with pytest.raises(EMAStateError, match="do not match the 2 trained parameters"):
        ema.load_state_dict({"0": torch.ones(2)})
    with pytest.raises(EMAStateError, match="shape"):
        ema.load_state_dict({"unet.a": torch.ones(4), "unet.b": torch.ones(3)})


EMA_RUN = dict(train_extra="ema = true", save_extra="use_ema = true\nevery_n_steps = 2\nstate = true\n")


def _final_model(run: str):
    from pathlib import Path

    return load_file(str(Path(run) / "checkpoints" / "t.safetensors"))


def _unet_weights(source) -> torch.Tensor:
    from engine.models.load import load_model

    unet = load_model(str(source), hash_file=False).unet
    return torch.cat([p.detach().float().flatten() for p in unet.parameters()])


@pytest.mark.slow
def test_a_tiny_run_saves_an_average_that_moved_with_training(tmp_path, tiny_sd1, plain_run):
    """Six steps with ema_decay 0.9999: without warm-up the saved model would be the base
    model to three decimals; with it, the average sits among the trained weights."""
    ema = run_training(make_run(tmp_path / "ema", tiny_sd1, steps=6, **EMA_RUN), sink=ListSink())
    _sink, raw = plain_run(6)   # the same file without EMA: EMA changes no step
    assert ema.status == raw.status == "completed"
    base, live, average = _unet_weights(tiny_sd1), _unet_weights(raw.model_path), _unet_weights(ema.model_path)
    travelled = (live - base).norm()
    assert travelled > 0
    assert not torch.equal(average, live)                  # the file holds the average, not the live weights
    assert (average - live).norm() < 0.5 * travelled       # and it moved most of the way with training
    assert (average - base).norm() > 0.5 * travelled


@pytest.mark.slow
def test_an_ema_run_resumes_exactly_and_an_older_state_resumes_with_a_note(tmp_path, tiny_sd1):
    straight = run_training(make_run(tmp_path / "a", tiny_sd1, steps=4, **EMA_RUN), sink=ListSink())
    split_path = make_run(tmp_path / "b", tiny_sd1, steps=4, **EMA_RUN)
    split_path.write_text(split_path.read_text().replace("max_train_steps = 4", "max_train_steps = 2"))
    assert run_training(split_path, sink=ListSink()).status == "completed"
    split_path.write_text(split_path.read_text().replace("max_train_steps = 2", "max_train_steps = 4"))
    resumed = run_training(split_path, sink=ListSink(), resume="latest")
    assert resumed.status == "completed", resumed.message
    a, b = _final_model(straight.run_dir), _final_model(resumed.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # An older sdft's state: the same average keyed by position, manifest to match.
    state = find_latest_state(tmp_path / "b" / "runs" / "t" / "state")
    tensors = load_file(str(state / "ema.safetensors"))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1, subfolder="unet")
    order = [f"unet.{name}" for name, _p in unet.named_parameters()]
    assert set(order) == set(tensors)
    save_file({str(i): tensors[k] for i, k in enumerate(order)}, str(state / "ema.safetensors"))
    manifest = json.loads((state / "manifest.json").read_text())
    manifest["ema.safetensors"] = file_sha256(state / "ema.safetensors")
    (state / "manifest.json").write_text(json.dumps(manifest))
    split_path.write_text(split_path.read_text().replace("max_train_steps = 4", "max_train_steps = 5"))
    sink = ListSink()
    again = run_training(split_path, sink=sink, resume=str(state))
    assert again.status == "completed", again.message
    assert any("older sdft" in e.text for e in sink.of(Message))
