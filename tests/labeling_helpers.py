"""Tiny labelling models for tests, built with the real classes (no downloads).

* ``make_tagger_onnx``: an NHWC float32 classifier with WD14's / DeepDanbooru's signature.
  Output k = sigmoid(bias[k] + sum_c weight[c, k] * mean_c(x) * scale): with zero weights
  the scores are constants we choose; with weights they follow the image's channel means
  (channel 0 of the *model input*, so BGR order is visible).
* ``make_wd14_folder`` / ``make_ddb_folder``: model.onnx + selected_tags.csv / tags.txt.
* ``make_blip_folder``: a tiny BlipForConditionalGeneration + BlipProcessor with a
  hand-written BERT vocab, saved with save_pretrained.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def make_tagger_onnx(path: Path, scores: Sequence[float], *, size: int = 16, batch: int | str = "batch",
                     weights: np.ndarray | None = None, scale: float = 1 / 255, input_name: str = "input_1:0",
                     output_name: str = "predictions_sigmoid") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = len(scores)
    w = np.zeros((3, count), np.float32) if weights is None else np.asarray(weights, np.float32)
    b = np.array([logit(p) for p in scores], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["y"]),
    ]
    # Rename the graph ends to the published models' names.
    nodes[0].input[0] = input_name
    nodes[-1].output[0] = output_name
    graph = helper.make_graph(
        nodes, "tiny_tagger",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, count])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(np.array(scale, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# A small selected_tags.csv: 4 ratings, general tags, character tags (one in the middle, to
# check the per-row category rule the labeling writer uses).
WD14_ROWS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("long_hair", 0), ("hatsune_miku_(vocaloid)", 4), ("smile", 0), ("^_^", 0),
    ("solo", 0), ("red_eyes", 0), ("kaga_(kancolle)", 4),
]


def make_wd14_folder(folder: Path, scores: Sequence[float], rows=WD14_ROWS, **onnx_kwargs) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tagger_onnx(folder / "model.onnx", scores, **onnx_kwargs)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category) in enumerate(rows):
            writer.writerow([1000 + i, name, category, 100 - i])
    return folder


DDB_TAGS = ["1girl", "long_hair", "smile", "solo", "rating:safe", "rating:questionable", "rating:explicit"]


def make_ddb_folder(folder: Path, scores: Sequence[float], tags=DDB_TAGS, **onnx_kwargs) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_kwargs.setdefault("scale", 1.0)
    onnx_kwargs.setdefault("input_name", "input_1")
    onnx_kwargs.setdefault("output_name", "activation_172")
    make_tagger_onnx(folder / "model.onnx", scores, **onnx_kwargs)
    (folder / "tags.txt").write_text("\n".join(tags) + "\n", encoding="utf-8")
    return folder


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "cat", "dog", "on", "the",
              "red", "blue", "sofa", "woman", "anime", "girl", "sitting", "with", "hat"]


def make_blip_folder(folder: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import BlipImageProcessor as ImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    processor = BlipProcessor(image_processor=ImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    processor.save_pretrained(str(folder))
    config = BlipConfig(
        text_config=dict(vocab_size=len(BLIP_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=96, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    # never emit [PAD] [UNK] [CLS] [MASK]: decoded captions then always hold words
    head = model.text_decoder.cls.predictions
    with torch.no_grad():
        for token in (0, 1, 2, 4):
            head.bias[token] = -30.0
            if getattr(head.decoder, "bias", None) is not None:
                head.decoder.bias[token] = -30.0
    model.save_pretrained(str(folder))
    return folder


def solid_image(path: Path, size=(24, 16), color=(200, 30, 30), mode: str = "RGB") -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path
