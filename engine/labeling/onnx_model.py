"""An ONNX image classifier run with onnxruntime (CUDA provider when available, else CPU).

Both taggers are NHWC float32 classifiers with one sigmoid score per tag. The input size
and a fixed batch dimension are read from the graph: a fixed batch overrides the user's
batch size, and a short last batch is padded with zeros and the padding dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.labeling.options import LabelError


def pick_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        if device.startswith("cuda:"):
            return [("CUDAExecutionProvider", {"device_id": int(device.split(":", 1)[1])}), "CPUExecutionProvider"]
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        raise LabelError("device cuda asked for, but onnxruntime has no CUDA provider here "
                         f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """``scores(batch NHWC float32) -> (N, num_outputs)`` with the graph's own shape rules."""

    def __init__(self, path: Path, device: str = "auto", *, what: str = "tagger"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise LabelError("the taggers need onnxruntime: pip install onnxruntime "
                             "(or onnxruntime-gpu for CUDA)") from None
        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=pick_providers(device))
        except LabelError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt or non-ONNX file
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LabelError(f"{self.path}: not a usable ONNX {what} model ({first})") from None
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise LabelError(f"{self.path}: expected one NHWC image input, found "
                             + ", ".join(f"{i.name}{list(i.shape)}" for i in inputs))
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        n, h, w, c = inputs[0].shape
        if c not in (3, None) and not isinstance(c, str):
            raise LabelError(f"{self.path}: input {self.input_name} has {c} channels; expected NHWC with 3")
        self.height = h if isinstance(h, int) else None
        self.width = w if isinstance(w, int) else None
        self.fixed_batch = n if isinstance(n, int) and n > 0 else None
        out_shape = outputs[0].shape
        self.num_outputs = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None

    def batch_size(self, wanted: int) -> int:
        return self.fixed_batch or max(1, wanted)

    def scores(self, batch: np.ndarray) -> np.ndarray:
        count = batch.shape[0]
        if self.fixed_batch and count != self.fixed_batch:
            pad = np.zeros((self.fixed_batch - count, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        out = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)[:count]
