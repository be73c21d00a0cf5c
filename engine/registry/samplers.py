"""Preview samplers: kohya's ``--sample_sampler`` / ``--ss`` names and the diffusers scheduler
each one builds, as kohya-ss/sd-scripts builds it (``get_my_scheduler`` in its
``library/train_util.py``). One table, read by the schema's ``sample.sampler`` choices, the
prompt-file parser, ``sdft from-kohya`` and the sampler itself; no torch here.

kohya builds every scheduler on SD's training schedule (scaled_linear betas 0.00085-0.012 over
1000 steps, ``v_prediction`` for v-models); sdft starts from the loaded model's own training
schedule instead, which is the same for an SD model and right for one with other betas. On top
of it each entry adds what kohya adds: ``algorithm_type`` for the two DPM-Solver++ spellings, and
``clip_sample = True`` wherever the scheduler has that setting (kohya turns it on after building),
and one setting of diffusers' own that plain ``dpmsolver`` needs to build at all.
See docs/run-file.md, ``[sample]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class SamplerEntry:
    name: str                       # kohya's name, sdft's spelling in run files
    scheduler: str                  # the diffusers class
    kwargs: Mapping[str, object] = field(default_factory=dict)   # set over the model's schedule
    aliases: tuple[str, ...] = ()   # kohya's other spellings of the same sampler
    package: tuple[str, str] | None = None   # (module, pip command) the scheduler imports
    min_steps: int = 1              # fewer sampling steps make the scheduler raise

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


_CLIP = {"clip_sample": True}   # kohya: "clip_sample=Trueにする" on every scheduler that has it

# kohya's --sample_sampler choices in its order, then ddpm (kohya builds it but left it out of
# the choices: "ddpm gives odd results"; sdft has always offered it).
SAMPLERS: tuple[SamplerEntry, ...] = (
    SamplerEntry("ddim", "DDIMScheduler", _CLIP),
    SamplerEntry("pndm", "PNDMScheduler", min_steps=4),   # its Runge-Kutta warm-up takes 4 steps
    SamplerEntry("lms", "LMSDiscreteScheduler", aliases=("k_lms",), package=("scipy", "pip install scipy")),
    SamplerEntry("euler", "EulerDiscreteScheduler", aliases=("k_euler",)),
    SamplerEntry("euler_a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a",)),
    SamplerEntry("heun", "HeunDiscreteScheduler", _CLIP),
    SamplerEntry("dpm_2", "KDPM2DiscreteScheduler", aliases=("k_dpm_2",)),
    SamplerEntry("dpm_2_a", "KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",)),
    # diffusers (since 0.26) refuses plain DPM-Solver with its default final_sigmas_type "zero"
    # (kohya's dpmsolver fails there); "sigma_min" is the setting its error message asks for.
    SamplerEntry("dpmsolver", "DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    SamplerEntry("dpmsolver++", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    SamplerEntry("dpmsingle", "DPMSolverSinglestepScheduler"),
    SamplerEntry("ddpm", "DDPMScheduler", _CLIP),
)

SAMPLER_NAMES: tuple[str, ...] = tuple(e.name for e in SAMPLERS)
ALIASES: Mapping[str, str] = MappingProxyType({a: e.name for e in SAMPLERS for a in e.aliases})
# Every spelling a run file, a prompt line or a kohya command line may use.
ACCEPTED_NAMES: tuple[str, ...] = SAMPLER_NAMES + tuple(ALIASES)
DEFAULT_SAMPLER = "ddim"
_BY_NAME = {e.name: e for e in SAMPLERS}


def canonical_name(value: str) -> str | None:
    """sdft's spelling of a sampler name (any case, kohya's k_ spellings), None when unknown."""
    name = str(value).strip().lower()
    name = ALIASES.get(name, name)
    return name if name in _BY_NAME else None


def sampler_entry(value: str) -> SamplerEntry:
    """The entry for a name in any accepted spelling; ValueError naming the choices."""
    name = canonical_name(value)
    if name is None:
        raise ValueError(f"unknown sampler {value!r}; use one of {', '.join(SAMPLER_NAMES)} "
                         f"(or kohya's {', '.join(ALIASES)})")
    return _BY_NAME[name]


def scheduler_config(value: str, base_config: Mapping[str, object]) -> dict[str, object]:
    """The scheduler's constructor arguments: the model's training schedule and the entry's own."""
    return {**{k: v for k, v in base_config.items() if not k.startswith("_")},
            **sampler_entry(value).kwargs}
