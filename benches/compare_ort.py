#!/usr/bin/env python3
"""convnext-edge against onnxruntime on the same ONNX files, side by side in one run.

  cargo build --release
  python benches/compare_ort.py --threads 1,2 target/bench-models/*.onnx

For each model and thread count the two runtimes alternate, round after round (ORT, ours,
ORT, ours, ...), so that drift of a shared, noisy machine hits both alike. Each round runs
--runs timed inferences in each runtime after a warm-up; onnxruntime in this process (CPU
execution provider, intra-op threads = the thread count, inter-op 1), convnext-edge through
`convnext-edge bench --json -`. Printed: the median over rounds of each round's median, and
the ratio ours / onnxruntime (below 1 = we are faster).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_input(sess, size):
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else None for d in inp.shape]
    shape = [1, 3, dims[2] or size, dims[3] or size]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return inp.name, x.astype(np.float16) if inp.type == "tensor(float16)" else x


def ort_round(sess, name, x, runs, warmup):
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ours_round(binary, path, threads, runs, warmup, size, float_only=False):
    cmd = [binary, "bench", "--model", path, "--threads", str(threads), "--iters", str(runs),
           "--warmup", str(warmup), "--json", "-"]
    if float_only:
        cmd.append("--float-only")
    if size:
        cmd += ["--input-size", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    report = json.loads(out.stdout)
    r = report["results"][0]
    if r["status"] != "ok":
        raise RuntimeError(f"{path}: {r['error']}")
    return r["p50_ms"], report["machine"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--bin", default="target/release/convnext-edge")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--float-only", action="store_true",
                    help="also time convnext-edge --float-only (tract's float path for quantized "
                         "models) in the same rotation")
    a = ap.parse_args()
    machine = None
    rows = []
    for path in a.models:
        for threads in [int(t) for t in a.threads.split(",")]:
            sess = ort_session(path, threads)
            name, x = ort_input(sess, a.input_size)
            theirs, ours, floats = [], [], []
            try:
                for _ in range(a.rounds):
                    theirs.append(ort_round(sess, name, x, a.runs, a.warmup))
                    p50, machine = ours_round(a.bin, path, threads, a.runs, a.warmup, a.input_size)
                    ours.append(p50)
                    if a.float_only:
                        floats.append(ours_round(a.bin, path, threads, a.runs, a.warmup,
                                                 a.input_size, float_only=True)[0])
            except Exception as e:  # one model failing does not stop the comparison
                rows.append((os.path.basename(path), threads, None, None, None, str(e)))
                continue
            rows.append((os.path.basename(path), threads, statistics.median(theirs),
                         statistics.median(ours), statistics.median(floats) if floats else None,
                         ""))
    cpu = machine["cpu_model"] if machine else platform.processor()
    print(f"{cpu}; onnxruntime {ort.__version__}; {a.rounds} alternating rounds x {a.runs} runs; median ms")
    extra = " --float-only | float/ORT |" if a.float_only else ""
    print(f"| model | threads | onnxruntime | convnext-edge | ours/ORT |{extra}")
    print("|---|---|---|---|---|" + ("---|---|" if a.float_only else ""))
    for model, threads, t, o, f, err in rows:
        if err:
            print(f"| {model} | {threads} | - | failed: {err} | - |" + (" - | - |" if a.float_only else ""))
        else:
            tail = f" {f:.2f} | {f / t:.2f}x |" if f is not None else ""
            print(f"| {model} | {threads} | {t:.2f} | {o:.2f} | {o / t:.2f}x |{tail}")


if __name__ == "__main__":
    main()
