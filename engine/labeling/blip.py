"""BLIP captioning through transformers.

``BlipForConditionalGeneration`` + ``BlipProcessor`` from a folder or hub id. The processor
(squash to its size, bicubic, CLIP mean/std) runs on the prefetch thread; generation runs
batched on the device with the conditional prompt "a picture of ", which is cut from the
decoded text. Nucleus sampling (top_p 0.9, repetition penalty 1.1) unless beam search.
torch and transformers are imported only when a captioner is built.
"""

from __future__ import annotations

from engine.labeling.options import CaptionOptions, LabelError
from engine.labeling.sources import resolve_model

PROMPT = "a picture of "
REQUIRED = ("config.json", ("model.safetensors", "pytorch_model.bin"),
            ("preprocessor_config.json", "processor_config.json"),
            ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))
HUB_FILES = ["*.json", "*.txt", "model.safetensors"]
DTYPES = {"fp32": "float32", "float32": "float32", "float": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def torch_device(device: str) -> str:
    """auto → cuda when torch sees a GPU, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LabelError(f"device {device} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def torch_dtype(name: str, device: str):
    import torch

    if name in ("auto", "", None):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise LabelError(f"dtype {name!r} unknown; use auto, fp32, fp16 or bf16")
    dtype = getattr(torch, DTYPES[name])
    if device == "cpu" and dtype == torch.float16:
        return torch.float32          # fp16 kernels are missing or slow on CPUs
    return dtype


def clean_prompt(text: str, prompt: str = PROMPT) -> str:
    """Decoded text without the conditional prompt, stripped."""
    text = text.strip()
    lead = prompt.strip()
    if text.lower().startswith(lead.lower()):
        text = text[len(lead):]
    return text.strip()


class BlipCaptioner:
    kind = "caption"

    def __init__(self, opts: CaptionOptions):
        self.opts = opts
        if opts.min_length > opts.max_length:
            raise LabelError(f"min_length {opts.min_length} is larger than max_length {opts.max_length}")
        self.folder = resolve_model(opts.model, required=REQUIRED, what="BLIP", allow_patterns=HUB_FILES)
        import torch
        import transformers
        from transformers import BlipForConditionalGeneration, BlipProcessor

        # Library progress bars would draw over the wizard or our own progress bar.
        transformers.utils.logging.disable_progress_bar()

        self.torch = torch
        self.device = torch_device(opts.device)
        self.dtype = torch_dtype(opts.dtype, self.device)
        try:
            self.processor = BlipProcessor.from_pretrained(str(self.folder))
            model = BlipForConditionalGeneration.from_pretrained(str(self.folder), dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 - wrong architecture, corrupt weights
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LabelError(f"{self.folder}: not a BLIP captioning model ({first}); pass a folder saved from "
                             "BlipForConditionalGeneration, e.g. Salesforce/blip-image-captioning-large") from None
        self.model = model.to(self.device).eval()
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        self.batch_size = max(1, opts.batch_size)
        self.source = str(self.folder)
        prompt = self.processor.tokenizer(PROMPT, return_tensors="pt")
        self.prompt_ids = prompt["input_ids"]
        self.prompt_mask = prompt["attention_mask"]

    @staticmethod
    def prepare_one(im):
        return im

    def prepare_batch(self, images: list):
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def generation_kwargs(self) -> dict:
        o = self.opts
        if o.beam_search:
            return dict(do_sample=False, num_beams=max(1, o.num_beams), repetition_penalty=1.0)
        return dict(do_sample=True, num_beams=1, top_p=o.top_p, repetition_penalty=1.1)

    def run(self, pixel_values) -> list[str]:
        torch = self.torch
        n = pixel_values.shape[0]
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=pixel_values.to(self.device, self.dtype, non_blocking=True),
                input_ids=self.prompt_ids.repeat(n, 1).to(self.device),  # generate() edits it in place
                attention_mask=self.prompt_mask.repeat(n, 1).to(self.device),
                max_length=self.opts.max_length, min_length=self.opts.min_length,
                **self.generation_kwargs(),
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [self.opts.prefix + clean_prompt(t) + self.opts.suffix for t in texts]

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
