"""The one ONNX recipe: a Hugging Face sequence classifier -> ONNX fp32 -> (graph optimised) -> int8.

``bort export`` (the served files), the search's latency (:mod:`optimize.timing`) and the load
test's architecture-only models (:mod:`loadtest.shapes`) all build their graphs here, so the search
times, for a shape, the graph ``bort export`` writes and ``bort serve`` runs for it:

1. fp32: Optimum's ``main_export`` of a saved classifier folder, task ``text-classification``,
   offline (the classifier head included; dynamic batch and sequence axes; Optimum's opset);
2. optionally ORTOptimizer O2 on that graph (no speedup measured here: ONNX Runtime fuses what
   matters when it loads the graph anyway);
3. int8, two ways, each with the ``AutoQuantizationConfig`` preset for this CPU's instruction set:

   - ``int8`` (dynamic): ORTQuantizer, weights int8, activations scaled per call from the batch
     itself, so an answer depends slightly on the other texts (and padding) in its batch; on an
     O2 graph, where ORTQuantizer fails, onnxruntime's ``quantize_dynamic`` told the default
     tensor type;
   - ``int8_static`` (calibrated): ORTQuantizer's static QDQ quantisation of the MatMuls that
     hold a weight (per-channel int8 weights; the attention's activation-by-activation products
     stay fp32), the activation ranges fixed beforehand by MinMax calibration on texts from the
     task's training split (random token ids for the search's random-weight candidates, whose
     ranges do not change the timing). Where that costs too much accuracy, ``bort export``
     rebuilds it with the feed-forward output projections kept in fp32
     (``keep_ffn_output_fp32``): their inputs, just after GELU, carry outliers one uint8 scale
     cannot hold (on the embedded default's MiniLM labeller: 1.60 dev points lost, then none). Fixed scales make every row independent of its neighbours, so requests
     can be merged into one model call (a test checks labels and scores alone and in a batch of 32).
     On an O2 graph, onnxruntime's ``quantize_static`` with the same settings.

Which of fp32, ``int8`` and ``int8_static`` is worth deploying is measured, not assumed
(:mod:`runtime.speed`): on CPUs without VNNI int8 may buy nothing.

:func:`random_classifier` saves a seeded random classifier at any shape: latency does not depend
on weight values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bort import families as F
from bort.artifacts import atomic_write_json, cpu_info
from runtime.session import SERVING_FILE

log = logging.getLogger(__name__)


class _NoTiedWeightsNote(logging.Filter):
    """Drops Optimum's note that its tied-weight deduplication needs accelerate: a sequence
    classifier ties no weights, so the skipped check has nothing to do, and the search exports
    dozens of candidates (one note each)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Weight deduplication check" not in record.getMessage()


logging.getLogger("optimum.exporters.onnx.base").addFilter(_NoTiedWeightsNote())

QUANTIZATION_TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")
# What a folder holds: fp32, dynamic int8 (the name it has always had) or calibrated static int8.
PRECISIONS = ("fp32", "int8", "int8_static")
QUANTIZATION = {"fp32": None, "int8": "dynamic", "int8_static": "static"}  # serving.json's "quantization"
# Static quantisation quantises MatMuls with a weight only: with every QDQ-capable operator (Add, Mul,
# Softmax, LayerNorm...) the extra Quantize/Dequantize pairs cost more than they save, and the
# attention's activation x activation MatMuls cost accuracy for no measured speed.
STATIC_OPERATORS = ("MatMul",)
# A feed-forward output projection (BERT, RoBERTa, MPNet: layer.N.output.dense; not attention.output.dense).
FFN_OUTPUT = re.compile(r"(?<!attention)/output/dense/")
# Bump when a step below changes the graph it writes: the search's latency cache keys on it.
RECIPE_VERSION = 1
RECIPE = ("optimum main_export (text-classification, sequence-classifier head) -> optional ORTOptimizer O2 "
          "-> int8: dynamic (ORTQuantizer ISA preset; quantize_dynamic on O2 graphs) or static QDQ of the "
          "weight MatMuls (per-channel), MinMax-calibrated on training texts (ORTQuantizer; quantize_static "
          "on O2 graphs); "
          f"runtime/recipe.py v{RECIPE_VERSION}")


def quantization_target(requested: str = "auto") -> tuple[str, str]:
    """Pick the dynamic-quantisation preset this CPU supports.

    Returns:
        ``(target, why)``: one of :data:`QUANTIZATION_TARGETS` and the flags that decided it.
    """
    if requested != "auto":
        return requested, "set by export.quantization"
    info = cpu_info()
    isa = set(info["isa"])
    if info["machine"] in ("aarch64", "arm64"):
        return "arm64", f"machine {info['machine']}"
    if isa & {"avx512_vnni", "avx_vnni"}:
        # VNNI multiplies u8 x s8 without saturating: no reduced range needed.
        return "avx512_vnni", "cpu flag " + ", ".join(sorted(isa & {"avx512_vnni", "avx_vnni"}))
    if {"avx512f", "avx512bw", "avx512vl"} <= isa:
        return "avx512", "cpu flags avx512f, avx512bw, avx512vl"
    if "avx2" in isa:
        return "avx2", "cpu flag avx2"
    return "avx2", "no AVX2/AVX-512/VNNI flag found; AVX2 settings as the portable fallback"


def check_precision(precision: str) -> str:
    """`precision` itself when it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: it is not.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def recipe_key(precision: str, optimize_graph: bool, target: str) -> str:
    """What a graph built here depends on besides the model, e.g. ``recipe1/o0/int8-avx512_vnni``
    (static int8: ``int8s-avx512_vnni``)."""
    quantized = {"fp32": "fp32", "int8": f"int8-{target}", "int8_static": f"int8s-{target}"}[check_precision(precision)]
    return f"recipe{RECIPE_VERSION}/{'o2' if optimize_graph else 'o0'}/{quantized}"


def random_classifier(arch: F.Arch, out: Path, *, family: str = "bert", base_config: Any = None,
                      labels: Sequence[str] = ("LABEL_0", "LABEL_1"), tokenizer_dir: Path | None = None,
                      seed: int = 0) -> Path:
    """A seeded random sequence classifier at `arch`, saved in Hugging Face layout at `out`.

    Args:
        family: bert | roberta | mpnet.
        base_config: a config to copy vocabulary and the rest from (the source's); None: the family's.
        labels: class names, in id order (the head's width).
        tokenizer_dir: a folder whose tokenizer is saved alongside (the export copies it; a
            timing-only folder needs none).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    config = F.hf_config(arch, family, base_config, num_labels=len(labels), id2label=dict(enumerate(labels)),
                         label2id={name: i for i, name in enumerate(labels)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_dir is not None:
        F.load_tokenizer(tokenizer_dir).save_pretrained(out)
    return out


def export_fp32(model_dir: Path, out_dir: Path, optimize_graph: bool = False) -> Path:
    """Optimum export of a sequence-classifier folder to ``out_dir/model.onnx`` (offline, local folder).

    The tokenizer and ``config.json`` are saved beside the graph. Returns ``out_dir``.
    """
    import torch
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The traced attention mask's constants: the batch and sequence axes stay dynamic anyway.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Callers check what they need (bort export: parity against PyTorch); Optimum's own
        # validation reloads the model and runs it again.
        main_export(str(model_dir), output=out_dir, task="text-classification", do_validation=False,
                    local_files_only=True)
    if optimize_graph:
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        scratch = out_dir / ".optimized"
        ORTOptimizer.from_pretrained(out_dir).optimize(AutoOptimizationConfig.O2(), save_dir=scratch)
        (scratch / "model_optimized.onnx").replace(out_dir / "model.onnx")
        shutil.rmtree(scratch)
    return out_dir


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser logs one INFO line per tensor on the root logger: hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool) -> Path:
    """Dynamic int8 quantisation of ``fp32_dir/model.onnx`` into ``out_dir`` (weights int8,
    activations quantised at run time); the other files of ``fp32_dir`` are copied along."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():
        _quantize(fp32_dir, out_dir, target, optimized_graph)
    _copy_sidecars(fp32_dir, out_dir)
    return out_dir


def _copy_sidecars(fp32_dir: Path, out_dir: Path) -> None:
    for f in fp32_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)


def _quantize(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool) -> None:
    if optimized_graph:
        # ORTQuantizer fails on O2/O3 graphs ("Unable to find data type ... DefaultTensorType");
        # onnxruntime's own quantize_dynamic works there when told the default tensor type.
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_dir / "model.onnx", out_dir / "model.onnx", weight_type=QuantType.QInt8,
                         per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    else:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        qconfig = getattr(AutoQuantizationConfig, target)(is_static=False)
        ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(
            save_dir=out_dir, quantization_config=qconfig, file_suffix=None)


def static_nodes(fp32_dir: Path, keep_ffn_output_fp32: bool = False) -> list[str]:
    """The MatMul nodes static int8 quantises: those with a weight (an initializer input), less the
    feed-forward output projections when `keep_ffn_output_fp32`."""
    import onnx

    model = onnx.load(str(fp32_dir / "model.onnx"), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)
            and not (keep_ffn_output_fp32 and FFN_OUTPUT.search(n.name))]


def quantize_static_int8(fp32_dir: Path, out_dir: Path, target: str, optimized_graph: bool,
                         calibration: Iterable[dict[str, Any]], keep_ffn_output_fp32: bool = False) -> Path:
    """Calibrated static int8 (QDQ) of ``fp32_dir/model.onnx`` into ``out_dir``; the other files
    of ``fp32_dir`` are copied along.

    Args:
        target: the ISA preset (:func:`quantization_target`); AVX2 without VNNI gets ORT's
            reduced weight range (7 bits), as its u8 x s8 multiply-add saturates otherwise.
        calibration: feeds for the graph, one text each: ``{input name: token ids}`` (a list of
            ints or a 1-D array; lengths may differ). MinMax over them fixes every activation range.
        keep_ffn_output_fp32: leave the feed-forward output projections in fp32 (see the module docstring).

    Raises:
        ValueError: no calibration feeds.
    """
    samples = [{name: [int(i) for i in ids] for name, ids in feed.items()} for feed in calibration]
    if not samples:
        raise ValueError("static int8 needs calibration texts; none were given")
    out_dir.mkdir(parents=True, exist_ok=True)
    nodes = static_nodes(fp32_dir, keep_ffn_output_fp32)
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="bort-calib-") as scratch:
        if optimized_graph:
            _quantize_static_ort(fp32_dir, out_dir, target, samples, nodes)
        else:
            _quantize_static_optimum(fp32_dir, out_dir, target, samples, nodes, Path(scratch))
    _copy_sidecars(fp32_dir, out_dir)
    return out_dir


def _static_config(target: str, nodes: list[str]) -> Any:
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    preset = getattr(AutoQuantizationConfig, target)
    kwargs = {"reduce_range": True} if target == "avx2" else {}
    # Per-channel weights: on the embedded default's student, per-tensor weights cost 0.8 dev points,
    # per-channel none, at the same speed.
    return preset(is_static=True, per_channel=True, operators_to_quantize=list(STATIC_OPERATORS),
                  nodes_to_quantize=nodes, **kwargs)


def _quantize_static_optimum(fp32_dir: Path, out_dir: Path, target: str, samples: list[dict[str, Any]],
                             nodes: list[str], scratch: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import CalibrationConfig

    qconfig = _static_config(target, nodes)
    # AutoCalibrationConfig.minmax(dataset) reads only a `datasets.Dataset`'s name and size; the
    # calibration itself takes any iterable of feeds, so the same config is built here directly.
    calibration = CalibrationConfig(dataset_name="task training split", dataset_config_name=None,
                                    dataset_split="train", dataset_num_samples=len(samples),
                                    method=CalibrationMethod.MinMax)
    quantizer = ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx")
    ranges = quantizer.fit(samples, calibration, onnx_augmented_model_name=scratch / "augmented.onnx",
                           operators_to_quantize=qconfig.operators_to_quantize)
    quantizer.quantize(save_dir=out_dir, quantization_config=qconfig, file_suffix=None,
                       calibration_tensors_range=ranges)


def _quantize_static_ort(fp32_dir: Path, out_dir: Path, target: str, samples: list[dict[str, Any]],
                         nodes: list[str]) -> None:
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self) -> dict[str, Any] | None:
            row = next(self.rows, None)  # one text: (1, its tokens), as Optimum's reader feeds it
            return None if row is None else {name: np.asarray([ids], dtype=np.int64) for name, ids in row.items()}

    ort_quantize_static(fp32_dir / "model.onnx", out_dir / "model.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_OPERATORS), nodes_to_quantize=nodes, per_channel=True,
                        reduce_range=target == "avx2", activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"],
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True})


def random_calibration(vocab_size: int, seq_len: int, count: int = 8, seed: int = 0,
                       input_names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids")
                       ) -> list[dict[str, Any]]:
    """Seeded random token ids of `seq_len`: calibration for random-weight models, whose
    activation ranges do not change how long a call takes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(count):
        ids = rng.integers(min(1000, vocab_size - 1), vocab_size, seq_len).tolist()
        feed = {"input_ids": ids, "attention_mask": [1] * seq_len, "token_type_ids": [0] * seq_len}
        arrays.append({k: v for k, v in feed.items() if k in input_names})
    return arrays


def graph_inputs(folder: Path) -> list[str]:
    """Input names of ``folder/model.onnx`` (BERT: input_ids, attention_mask, token_type_ids)."""
    import onnx

    return [i.name for i in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.input]


def export_model(model_dir: Path, out_root: Path, precision: str, target: str,
                 optimize_graph: bool = False, calibration: Iterable[dict[str, Any]] | None = None) -> Path:
    """The whole recipe: ``out_root/fp32`` and, for int8, ``out_root/<precision>``; returns the
    `precision` folder. Static int8 without `calibration` is calibrated on random token ids (timing
    only).

    Raises:
        ValueError: `precision` is not one of :data:`PRECISIONS`.
    """
    check_precision(precision)
    fp32 = export_fp32(model_dir, out_root / "fp32", optimize_graph)
    if precision == "fp32":
        return fp32
    if precision == "int8":
        return quantize_int8(fp32, out_root / "int8", target, optimize_graph)
    if calibration is None:
        calibration = random_calibration(vocab_size(fp32), 32, input_names=graph_inputs(fp32))
    return quantize_static_int8(fp32, out_root / "int8_static", target, optimize_graph, calibration)


def write_serving(folder: Path, *, labels: Sequence[str], is_pair: bool, precision: str, name: str,
                  max_seq_len: int, **extra: Any) -> Path:
    """The sidecar ``bort serve``'s predictor reads beside ``model.onnx``: what the folder classifies
    and how (padding token from the folder's tokenizer config). `extra` adds keys (e.g. ``speed_only``)."""
    tokenizer_config = folder / "tokenizer_config.json"
    pad: Any = "[PAD]"
    if tokenizer_config.is_file():
        pad = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("pad_token") or pad
    atomic_write_json(folder / SERVING_FILE, {
        "name": name, "labels": list(labels), "is_pair": is_pair, "precision": precision,
        "max_seq_len": max_seq_len, "pad_token": pad if isinstance(pad, str) else pad.get("content"), **extra})
    return folder


def vocab_size(model_dir: Path) -> int:
    """The vocabulary size a saved model's ``config.json`` declares."""
    return int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"])
