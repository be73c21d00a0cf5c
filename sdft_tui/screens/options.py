"""Step 4: training options with a live VRAM estimate (engine.plan), suggestions and presets."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Checkbox, Footer, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from engine import families
from engine.preflight.model import look_at_model
from engine.project.wizard_options import option_fields
from sdft_tui.screens.buckets import FIELDS as BUCKET_FIELDS
from sdft_tui.screens.wizard_base import FormRow, StepBar, StepProblems, WizardScreen, step_key
from sdft_tui.text import literal
from sdft_tui.widgets.on_off import OnOffCheckbox

# The form's fields, typed by the schema (engine/project/wizard_options.py holds the one list)
FIELDS = option_fields()
FIELD_DOCS = {field.key: field.doc for field in FIELDS}

def preset_choices(family: str = "sd1") -> list[tuple[str, int]]:
    """The Preset select's cards for a model family (SD: 8 to 48+ GB; SDXL: 24, 48, 80+ GB)."""
    from engine.plan import presets_for

    sizes = sorted(presets_for(family))
    return [(f"{size}{'+' if size == sizes[-1] else ''} GB card", size) for size in sizes]


PRESET_CHOICES = tuple(preset_choices())


def _wid(key: str) -> str:
    return "o-" + key.replace(".", "-")


def _text(value) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _number(text: str) -> int | float:
    """A whole number, or a fraction where the key takes one (a warm-up of 0.05 of the steps)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _box_label(value) -> str:
    """A checkbox's words follow its state: the box alone is one colour apart on a 16-colour terminal."""
    return "on" if value else "off"


def _read_only(kind: str, value) -> str | None:
    """What a field shows, not edits, for a value the form has no way to type: several sample
    prompts written in the run file."""
    if kind.startswith("prompt") and isinstance(value, (list, tuple)) and len(value) != 1:
        return f"{len(value)} inline prompt(s): edit them in the run file"
    return None


def _field_text(kind: str, value) -> str:
    """The text a field shows for ``value``: one sample prompt is the prompt itself (a prompts
    file, its name)."""
    if kind.startswith("prompt") and isinstance(value, (list, tuple)) and len(value) == 1:
        return str(value[0])
    return _read_only(kind, value) or _text(value)


def _a_card(size_gb: int) -> str:
    return f"{'an' if str(size_gb).startswith('8') else 'a'} {size_gb} GB card"


def field_label(key: str) -> str:
    """The words a step shows for a dotted key ("Batch size" for dataset.batch_size)."""
    if key.startswith("general."):
        key = "dataset." + key.split(".", 1)[1]
    for field in FIELDS:
        if field.key == key:
            return field.label
    return dict(BUCKET_FIELDS).get(key, key)


def preset_message(size: int, before: dict, after: dict, kept: dict) -> str:
    """What a preset changed, field by field, and what it left as set on an earlier step."""
    changed = [f"{field_label(k)} {_text(before.get(k))} → {_text(v)}" for k, v in after.items()
               if before.get(k) != v]
    text = f"{size} GB preset: " + ("; ".join(changed) if changed else "nothing to change")
    for key, value in kept.items():
        current = after.get("dataset." + key.split(".", 1)[1] if key.startswith("general.") else key)
        if current != value:
            text += (f"\nkept {field_label(key)} {_text(current)} as set on Buckets "
                     f"(the preset picks {_text(value)}; change it there, {step_key('buckets')})")
    return text


class OptionsScreen(WizardScreen):
    STEP = "options"
    AUTO_FOCUS = "#o-model-pretrained_model_name_or_path"  # the first field, not the hidden suggestions
    BINDINGS = [
        Binding("ctrl+g", "focus_suggestions", "Suggestions", priority=True),
        Binding("ctrl+l", "focus_preset", "Preset", priority=True),
    ]

    def __init__(self):
        super().__init__()
        self.target_gb: int | None = None  # a preset's card size when no GPU was detected
        self._gpu_choices = 1               # the GPU counts the GPUs select offers
        self._preset_family = "sd1"         # the family whose cards the Preset select offers
        # the state value each field shows: a field is reloaded only when its value changed since,
        # so a preset or a step change never replaces text the user is typing (even half-typed)
        self._shown: dict[str, object] = {}

    def compose(self):
        yield StepBar(self.STEP)
        yield Static(id="vram")
        yield StepProblems()
        yield OptionList(id="suggestions", compact=True)
        yield FormRow("Preset", Select(PRESET_CHOICES, prompt="choose a card size", id="preset", compact=True),
                      id="preset-row")
        # shown once the probe finds several GPUs: the estimate is per GPU, the command gets --gpus
        yield FormRow("GPUs", Select([("1", 1)], value=1, allow_blank=False, id="gpus", compact=True),
                      id="gpus-row", tooltip="GPUs to train on: `sdft train RUN.toml --gpus N` (one process "
                                             "each, N times the batch per step); the estimate is per GPU")
        form = VerticalScroll(id="options-form")
        form.can_focus = False  # its fields are the Tab stops; it scrolls to the focused one
        with form:
            values = self.state.values
            for field in FIELDS:
                key, kind, opts = field.key, field.kind, field.choices
                value = values.get(key)
                if kind == "select":
                    initial = value if value in [v for _l, v in opts] else opts[0][1]
                    widget = Select(opts, value=initial, allow_blank=False, id=_wid(key), compact=True)
                elif kind == "bool":
                    widget = OnOffCheckbox(_box_label(value), bool(value), id=_wid(key), compact=True)
                else:
                    widget = Input(_field_text(kind, value), id=_wid(key), compact=True,
                                   disabled=_read_only(kind, value) is not None)
                yield FormRow(field.label, widget, tooltip=field.doc, id="row-" + _wid(key))
            yield Static(id="model-info")
        yield Footer()

    def on_mount(self) -> None:
        self._load_fields()
        self.detect_model(self.state.get("model.pretrained_model_name_or_path") or "")
        self.refresh_view()

    def on_screen_resume(self) -> None:
        self._load_fields()
        super().on_screen_resume()

    # ---------------------------------------------------------------- fields <-> state

    def _load_fields(self) -> None:
        v = self.state.values
        for field in FIELDS:
            key, kind = field.key, field.kind
            widget = self.query_one("#" + _wid(key))
            value = v.get(key)
            if key in self._shown and self._shown[key] == value:
                continue  # unchanged: the field keeps what it shows (the user's text included)
            self._shown[key] = value
            with widget.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
                if kind == "select":
                    options = [val for _words, val in field.choices]
                    if value in options:
                        widget.value = value
                elif kind == "bool":
                    widget.value = bool(value)
                    widget.label = _box_label(value)
                else:
                    widget.disabled = _read_only(kind, value) is not None
                    text = _field_text(kind, value)
                    if widget.value != text:
                        widget.value = text
                    self.accept(widget, field_label(key), FIELD_DOCS[key] or None)

    def _kind(self, wid: str):
        for field in FIELDS:
            if _wid(field.key) == wid:
                return field.key, field.kind
        return None, None

    @on(Input.Changed)
    def _input(self, event: Input.Changed) -> None:
        key, kind = self._kind(event.input.id or "")
        if key is None or event.input.disabled:
            return
        label, tooltip = field_label(key), FIELD_DOCS[key] or None
        text = event.value.strip()
        if text == _field_text(kind, self.state.get(key)).strip():
            self.accept(event.input, label, tooltip)
            return  # the field was only (re)loaded: keep the value as the file has it (e.g. a list)
        try:
            if kind.endswith("?") and text == "":
                value = None
            elif kind in ("int", "int?"):
                value = int(text)
            elif kind in ("number", "number?"):
                value = _number(text)
            elif kind in ("float", "float?"):
                value = float(text)
            elif kind.startswith("prompt"):   # one inline prompt (sample.prompts = ["..."]) or a file
                value = self.state.project.sample_prompts_from_text(text)
            else:
                value = text
        except ValueError:
            self.reject(event.input, label, "write a whole number" if kind.startswith("int") else "write a number")
            return
        problem = self.state.value_problem(key, value)
        if problem:
            self.reject(event.input, label, problem)
            return
        self.accept(event.input, label, tooltip)
        self._set(key, value)
        if key == "model.pretrained_model_name_or_path":
            self.detect_model(text)
        if key.startswith("sample.every_n") and value is not None:
            self._default_prompt()
        self.refresh_view()

    def _default_prompt(self) -> None:
        """Sampling was turned on without a prompt: start from a caption of the dataset."""
        if self.state.get("sample.prompts") is None:
            prompt = self.state.project.default_sample_prompt()
            if prompt:
                self.state.set("sample.prompts", [prompt])
                self._load_fields()

    @on(Select.Changed)
    def _select(self, event: Select.Changed) -> None:
        if event.select.id == "preset":
            if event.value is not Select.BLANK:
                self.apply_preset(int(event.value))
            return
        if event.select.id == "gpus":
            self.state.gpus = int(event.value)
            self.refresh_view()
            return
        key, _kind = self._kind(event.select.id or "")
        if key is None or event.value is Select.BLANK:
            return
        self._set(key, event.value)
        if key == "memory.mixed_precision" and event.value != "bf16" and self.state.get("memory.full_bf16"):
            self.state.set("memory.full_bf16", False)  # full_bf16 needs bf16 mixed precision
            self._load_fields()
        self.refresh_view()

    @on(Checkbox.Changed)
    def _check(self, event: Checkbox.Changed) -> None:
        key, _kind = self._kind(event.checkbox.id or "")
        if key is None:
            return
        event.checkbox.label = _box_label(event.value)
        self._set(key, event.value)
        if key == "memory.full_bf16" and event.value and self.state.get("memory.mixed_precision") != "bf16":
            self.state.set("memory.mixed_precision", "bf16")
            self._load_fields()
        self.refresh_view()

    def _set(self, key: str, value) -> None:
        """A value the user chose in a field (the field shows it already)."""
        self.state.set_by_user(key, value)
        self._shown[key] = value

    def apply_preset(self, size: int, why: str = "") -> None:
        before = dict(self.state.values)
        replaced = self.state.apply_preset(size)
        if self.state.gpu_budget() is None:
            self.target_gb = size
        self._load_fields()
        self.refresh_view()
        message = why + preset_message(size, before, self.state.values, self.state.preset_kept)
        self.notify(message + "".join(f"\n{note}" for note in replaced), markup=False,
                    severity="warning" if replaced else "information", timeout=12)

    def action_focus_suggestions(self) -> None:
        self.query_one("#suggestions", OptionList).focus()

    def action_focus_preset(self) -> None:
        self.query_one("#preset", Select).focus()

    @on(OptionList.OptionSelected, "#suggestions")
    def _apply_suggestion(self, event: OptionList.OptionSelected) -> None:
        suggestion = getattr(self, "_suggestions", {}).get(event.option.id)
        if suggestion is None:
            return
        self.state.apply(suggestion.config_changes)
        self._load_fields()
        self.refresh_view()
        self.notify("applied: " + suggestion.text.split(":")[0])

    # ---------------------------------------------------------------- model detection

    @work(thread=True, exclusive=True, group="detect")
    def detect_model(self, source: str) -> None:
        guess = look_at_model(self.state.project.model_source(source))
        self.state.model_guess = guess
        self.app.call_from_thread(self._model_detected)

    def _model_detected(self) -> None:
        """A model of another family than the applied preset's (SD's presets applied at start,
        then an SDXL model chosen): its family's preset for this card instead, said so."""
        size = self.state.preset_for_family()
        if size is not None:
            label = families.family(self.state.family).label
            self.apply_preset(size, why=f"an {label} model: its presets; ")
        self.refresh_view()

    def _show_preset_choices(self) -> None:
        family = self.state.family
        if family == self._preset_family:
            return
        select = self.query_one("#preset", Select)
        with select.prevent(Select.Changed):
            select.set_options(preset_choices(family))
        self._preset_family = family

    # ---------------------------------------------------------------- VRAM

    def budget(self) -> tuple[float | None, str]:
        from engine.plan import budget_for_preset

        gpu_bytes = self.state.gpu_budget()
        hw = self.state.hardware
        if gpu_bytes:
            # The estimate is in GB (10^9): give the card in GB too, with the GiB nvidia-smi shows.
            from engine.plan import GB

            name = getattr(getattr(hw, "best_gpu", None), "name", "GPU")
            return gpu_bytes, f"{name}, {gpu_bytes / GB:.1f} GB ({gpu_bytes / 2**30:.1f} GiB)"
        label = "probing GPU…" if hw is None else hw.summary()
        if self.target_gb:
            return budget_for_preset(self.target_gb), f"{label}; planning for {_a_card(self.target_gb)}"
        return None, label

    def _show_gpu_choice(self) -> None:
        count = self.state.gpu_count()
        row = self.query_one("#gpus-row")
        row.display = count > 1
        if count > 1 and self._gpu_choices != count:   # the probe answered: offer each count
            choice = self.query_one("#gpus", Select)
            with choice.prevent(Select.Changed):
                choice.set_options([(str(n), n) for n in range(1, count + 1)])
                choice.value = min(self.state.gpus, count)
            self._gpu_choices = count

    def refresh_view(self) -> None:
        from engine.plan import GB, N_UNET, estimate_peak_vram, suggest

        self._show_gpu_choice()
        self._show_preset_choices()
        # the prompt matters when sampling is on (or a prompt is set: a problem may name the field)
        self.query_one("#row-" + _wid("sample.prompts")).display = \
            self.state.get("sample.every_n_steps") is not None or self.state.get("sample.prompts") is not None
        self.show_step_problems(field_label, lambda key: _wid(key) if key in FIELD_DOCS else None)
        vram = self.query_one("#vram", Static)
        suggestions = self.query_one("#suggestions", OptionList)
        info = self.query_one("#model-info", Static)
        tokens = self.state.token_summary()
        info.update(Text(f"Model: {self.state.model_guess.label()}" + (f"\nCaptions: {tokens}" if tokens else ""),
                         style="dim"))
        try:
            options = self.state.plan_options()
            est = estimate_peak_vram(options)
        except Exception as exc:
            vram.update(Text(f"VRAM estimate unavailable: {exc}", style="red"))
            suggestions.clear_options()
            return
        budget, gpu_label = self.budget()
        text = Text()
        text.append("GPU  ", style="bold")
        text.append(gpu_label + "\n")
        text.append("VRAM ", style="bold")
        # engine.plan models a full-size U-Net whatever the base model is: say so, and say it
        # loudly for a small test model (the demo's), whose real need is a small fraction of it.
        per_gpu = f" per GPU x{options.processes}" if options.processes > 1 else ""
        text.append(f"~{est.gb:.1f} GB peak{per_gpu}, {options.width}x{options.height} "
                    f"b{options.batch_size}, full-size {options.family.upper()}")
        self._suggestions = {}
        suggestions.clear_options()
        if budget is not None:
            fits = est.fits(budget)
            # a preset names its card ("an 8 GB card"); a detected GPU is given in GB like the estimate
            card = _a_card(self.target_gb) if self.state.gpu_budget() is None and self.target_gb \
                else f"{budget / GB:.1f} GB"
            text.append(" · ")
            if fits:
                text.append(f"fits {card}", style="bold green")
            else:
                text.append(f"won't fit {card}", style="bold red")
                for n, s in enumerate(suggest(options, budget, capabilities=self.state.capabilities())[:4]):
                    oid = f"s{n}"
                    self._suggestions[oid] = s
                    mark = "✓" if s.fits else "·"
                    suggestions.add_option(Option(literal(f"{mark} {s.text}"), id=oid))
        for reason in self.state.cannot_run_here():
            text.append(f"\n{reason}", style="yellow")
        if self.state.model_guess.small:
            params = f"{N_UNET.get(options.family, N_UNET['sd1']) / 1e6:.0f} M"
            text.append(f"\nthat is a full-size {options.family.upper()} U-Net ({params} params); "
                        "this test model needs far less", style="yellow")
        top = sorted(est.breakdown.items(), key=lambda kv: -kv[1])[:3]
        text.append(f"\n{est.phase}: " + ", ".join(f"{k} {v / GB:.1f}" for k, v in top), style="dim")
        vram.update(text)
        suggestions.display = bool(self._suggestions)
        if self._suggestions:
            suggestions.highlighted = 0
        self.set_class(budget is not None and not est.fits(budget), "overbudget")
