"""CPU inference: torch plain and fast against onnxruntime fp32 and int8, interleaved; labels.

For each model -- a random-weight R-50-D8 at 512x1024 (whole) and the bundled model at its test
size (256x512) -- four ways to segment one image, each a :class:`emanet.Segmenter`:

torch plain  the model as built: NCHW, BatchNorm unfolded (``fast=False``)
torch fast   BatchNorm folded, channels_last (``Segmenter``'s default on the torch backend)
ort fp32     ``backend="onnxruntime"``: the cached ONNX graph run by onnxruntime
ort int8     the same graph statically quantised (QDQ, per-channel weights; calibrated on
             toy-city scenes)

Each path lives in a process of its own, as it does for a user: PyTorch's OpenMP workers and
onnxruntime's threads each spin for a while after their work, and in one shared process they
would take the cores from the next path's run. The paths are still timed in one interleaved run:
every round asks each process in turn for two calls, back to back, and times the second (warm:
the cores are awake and the previous path's threads have gone to sleep, as for a user who
segments a folder), so load from elsewhere falls on all of them. Two times per path:

forward  ``segmenter.infer(x)``: the network on the preprocessed image (what the targets are
         about)
predict  ``segmenter(image)``: image in, labels out (preprocessing, network, labels)

and the median over the rounds is printed with its ratio to torch fast, the network's FLOPs per
second in the forward pass (:func:`emanet.deploy.flops.model_cost`), and the share of labels
equal to torch plain's (the bundled model on an unseen toy-city scene; R-50's random weights on
a random image make near-ties, so there the share of int8 says little). Above each table, this
CPU's fp32 ceiling as onnxruntime reaches it: a fifth process, timed in the same rounds, runs a
chain of 3x3 convolutions (R-50's busiest kind of layer, :func:`conv_chain`); no fp32 path can
run the network faster than its FLOPs at that rate. The ONNX files are exported on the first
run into the cache ($EMANET_CACHE, else beside torch.hub's) and reused afterwards.

``--fusion`` adds what the torch fast path is made of: BatchNorm folding and channels_last,
each on its own (:func:`fusion_report`).

Targets (issue 25): R-50 ort fp32 <= 0.75x torch fast, int8 <= 0.3x; bundled ort fp32 <= 0.6x
torch fast, int8 <= 0.4x.
Usage: python benchmarks/bench_model.py [--models r50 bundled] [--rounds 7] [--threads 2]
       [--fusion]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from emanet import Segmenter, build_model
from emanet.data.toycity import render_scene
from emanet.deploy.flops import model_cost
from emanet.fast.fusion import optimize_for_inference
from emanet.predict.int8 import toycity_calibration

R50 = "emanet_r50-d8_512x1024_80k_cityscapes"
#: The fifth process: this CPU's fp32 ceiling, timed with the paths (see :func:`conv_chain`).
CEILING = "fp32 ceiling"
CHAIN = {"layers": 4, "channels": 512}
CHAIN_FLOPS = CHAIN["layers"] * 2 * CHAIN["channels"] ** 2 * 9 * 64 * 128
PATHS = {
    "torch plain": dict(fast=False),
    "torch fast": dict(),
    "ort fp32": dict(backend="onnxruntime"),
    "ort int8": dict(backend="onnxruntime", precision="int8"),
}


def segmenter_and_image(model: str, path: str) -> tuple[Segmenter, Image.Image]:
    """``path``'s segmenter of ``model`` (``"r50"`` or ``"bundled"``) and the image it runs on."""
    options = PATHS[path]
    if model == "bundled":
        # A toy-city scene none of the paths has seen (int8 is calibrated on others).
        scene = render_scene(256, 512, np.random.default_rng([99, 0]))[0]
        return Segmenter.from_pretrained(device="cpu", **options), Image.fromarray(scene)
    torch.manual_seed(0)  # the same random weights in every process
    net = build_model(R50).eval()
    if options.get("precision") == "int8":
        options = dict(options, calibration=toycity_calibration())
    # The test scale (1024, 512) makes a 1024x512 image a 512x1024 input.
    segmenter = Segmenter(net, device="cpu", test_scale=(1024, 512), **options)
    pixels = np.random.default_rng(0).integers(0, 256, (512, 1024, 3), dtype=np.uint8)
    return segmenter, Image.fromarray(pixels)


def serve(model: str, path: str, threads: int, connection) -> None:
    """One path in its own process: answers ``"forward"`` and ``"predict"`` with the seconds
    one call took, after sending the labels of its first (warm-up, export) call and its input
    size (``None`` for :data:`CEILING`, whose two calls both run :func:`conv_chain`)."""
    torch.set_num_threads(threads)
    if path == CEILING:
        chain = conv_chain(threads)
        calls, first = {"forward": chain, "predict": chain}, None
    else:
        segmenter, image = segmenter_and_image(model, path)
        x = segmenter.preprocess(image)
        calls = {"forward": lambda: segmenter.infer(x), "predict": lambda: segmenter(image)}
        first = (segmenter(image).labels, tuple(x.shape[-2:]))
    connection.send(first)
    for _ in range(2):
        calls["forward"]()
    while (request := connection.recv()) != "stop":
        calls[request]()  # untimed: see "warm" in the module docstring
        start = time.perf_counter()
        calls[request]()
        connection.send(time.perf_counter() - start)


def interleaved(connections: dict, request: str, rounds: int) -> dict[str, float]:
    """Median seconds of ``request`` per path over ``rounds`` rounds that ask each path once."""
    times = {path: [] for path in connections}
    for _ in range(rounds):
        for path, connection in connections.items():
            connection.send(request)
            times[path].append(connection.recv())
    return {path: float(np.median(seconds)) for path, seconds in times.items()}


def conv_chain(threads: int) -> Callable[[], object]:
    """One run of :data:`CHAIN` (``layers`` 3x3 convolutions of ``channels`` channels on 64x128
    with ReLU between them: R-50's busiest kind of layer, at 512x1024) in onnxruntime fp32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the backend's
    graph = _conv_chain(CHAIN["layers"], CHAIN["channels"])
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    shape = (1, CHAIN["channels"], 64, 128)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return lambda: session.run(None, {"x": x})


def _conv_chain(layers: int, channels: int) -> bytes:
    """A serialised ONNX model: ``layers`` times Conv 3x3 (``channels`` -> ``channels``,
    padding 1) then ReLU, on ``x`` ``(1, channels, 64, 128)``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    nodes, weights, name = [], [], "x"
    for layer in range(layers):
        weight = rng.standard_normal((channels, channels, 3, 3)) / (3 * channels**0.5)
        weight = weight.astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("Conv", [name, f"w{layer}"], [f"c{layer}"], pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{layer}"], [name := f"r{layer}"]))
    shape = [1, channels, 64, 128]
    graph = helper.make_graph(
        nodes,
        "conv_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def measure(model: str, threads: int, rounds: int) -> dict:
    """Each path's forward and predict medians and labels for ``model``, interleaved."""
    context = multiprocessing.get_context("spawn")
    connections, processes, first = {}, [], {}
    for path in [*PATHS, CEILING]:
        mine, theirs = context.Pipe()
        process = context.Process(target=serve, args=(model, path, threads, theirs), daemon=True)
        process.start()
        connections[path], first[path] = mine, mine.recv()
        processes.append(process)
    try:
        forward = interleaved(connections, "forward", rounds)
        predict = interleaved(connections, "predict", rounds)
    finally:
        for connection in connections.values():
            connection.send("stop")
        for process in processes:
            process.join()
    labels = {path: first[path][0] for path in PATHS}
    input_size = first["torch plain"][1]
    return {"forward": forward, "predict": predict, "labels": labels, "input": input_size}


def report(model: str, results: dict, threads: int) -> None:
    """Print one model's table (see the module docstring)."""
    preset = R50 if model == "r50" else "emanet_r18-d8_toycity"
    input_size = results["input"]
    flops = model_cost(preset, input_size, "whole").flops
    forward, predict, labels = results["forward"], results["predict"], results["labels"]
    fast = forward["torch fast"]
    ceiling = CHAIN_FLOPS / forward[CEILING]
    print(
        f"\n{model}: input {input_size[0]}x{input_size[1]}, {threads} threads, cpu, "
        f"{flops / 1e9:.1f} GFLOP per forward pass; fp32 ceiling {ceiling / 1e9:.0f} GFLOP/s "
        f"(at best {flops / ceiling * 1e3:.1f} ms = {flops / ceiling / fast:.2f}x torch fast)"
    )
    print(
        f"{'path':12s} {'forward ms':>10s} {'vs fast':>8s} {'GFLOP/s':>8s} "
        f"{'predict ms':>11s} {'vs fast':>8s} {'same labels':>12s}"
    )
    for path in PATHS:
        same = float((labels[path] == labels["torch plain"]).mean())
        print(
            f"{path:12s} {forward[path] * 1e3:10.1f} {forward[path] / fast:7.2f}x "
            f"{flops / forward[path] / 1e9:8.0f} {predict[path] * 1e3:11.1f} "
            f"{predict[path] / predict['torch fast']:7.2f}x {same * 100:11.2f}%"
        )


def fusion_report(threads: int, rounds: int) -> None:
    """The torch fast path's two parts on their own, interleaved in this process (one runtime,
    one thread pool): forward ms of plain, channels_last only, BatchNorm folded only and both,
    for both models, against plain."""
    torch.set_num_threads(threads)
    for model in ("r50", "bundled"):
        segmenter, image = segmenter_and_image(model, "torch plain")
        net, x = segmenter.model, segmenter.preprocess(image).contiguous()
        x_cl = x.contiguous(memory_format=torch.channels_last)
        channels_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
        variants = {
            "plain": (net, x),
            "channels_last only": (channels_last, x_cl),
            "BN folded only": (optimize_for_inference(net, channels_last=False), x),
            "both (torch fast)": (optimize_for_inference(net), x_cl),
        }
        times = {name: [] for name in variants}
        with torch.inference_mode():
            for _ in range(rounds):
                for name, (variant, inputs) in variants.items():
                    variant.inference(inputs)  # warm, as in the paths' processes
                    start = time.perf_counter()
                    variant.inference(inputs)
                    times[name].append(time.perf_counter() - start)
        plain = np.median(times["plain"])
        print(f"\n{model}: the torch fast path's parts, forward, {threads} threads, cpu")
        for name, seconds in times.items():
            print(
                f"{name:20s} {np.median(seconds) * 1e3:9.1f} ms {np.median(seconds) / plain:6.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50", "bundled"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fusion", action="store_true", help="what the torch fast path is made of")
    args = parser.parse_args()
    for model in args.models:
        report(model, measure(model, args.threads, args.rounds), args.threads)
    if args.fusion:
        fusion_report(args.threads, args.rounds)


if __name__ == "__main__":
    main()
