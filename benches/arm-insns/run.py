#!/usr/bin/env python3
"""Guest instructions per steady-state inference under qemu-user, per board profile.

  cross/setup.sh && cargo build --release --target aarch64-unknown-linux-gnu
  python3 benches/arm-insns/run.py --boards pi4,pi5 \\
      models/fixtures/atto_224_f16_io32.onnx:f32 models/fixtures/atto_224_f16_io32.onnx:f16 \\
      models/fixtures/atto_224_qdq_pc_u8.onnx

Each MODEL[:PRECISION] runs `convnext-edge bench --threads 1 --warmup 0 --iters N` and
`--iters N+1` under `qemu-aarch64 -cpu <board's core> -plugin libinsns.so` with the board's
TRACT_* overrides from cross/boards.tsv (Debian 12's qemu 7.2 shows the guest the host's
/proc/cpuinfo, so tract needs them to pick the board's kernels); the difference is one
inference, with loading and optimisation cancelled out. This is a deterministic cost proxy for
comparing builds and kernel families, not a time: it ignores caches, memory bandwidth and the
pipeline. Compare counts only between runs that use the same kernels (printed beside them).
Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def boards():
    out = {}
    with open(os.path.join(ROOT, "cross", "boards.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, target, _libc, qemu, cpu, _tuned, tract = line.rstrip("\n").split("\t")
            env = dict(kv.split("=", 1) for kv in tract.split() if "=" in kv)
            out[name] = {"target": target, "qemu": qemu, "cpu": cpu, "env": env}
    return out


def plugin():
    so = os.path.join(ROOT, "target", "arm-insns", "libinsns.so")
    src = os.path.join(HERE, "insns.c")
    if not os.path.exists(so) or os.path.getmtime(so) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(so), exist_ok=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", so, src], check=True)
    return so


def count(board, binary, so, model, precision, iters):
    sysroot = "/usr/aarch64-linux-gnu" if board["qemu"] == "qemu-aarch64" else "/usr/arm-linux-gnueabihf"
    cmd = [board["qemu"], "-L", sysroot, "-cpu", board["cpu"], "-plugin", so, binary, "bench",
           "--model", model, "--precision", precision, "--threads", "1", "--warmup", "0",
           "--iters", str(iters), "--json", "-"]
    env = dict(os.environ, **board["env"])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"guest_insns (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
    result = json.loads(p.stdout)["results"][0]
    return int(m.group(1)), result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="MODEL[:auto|f32|f16|int8]")
    ap.add_argument("--boards", default="pi4,pi5")
    ap.add_argument("--iters", type=int, default=1, help="N: counts runs with N and N+1 inferences")
    ap.add_argument("--bin", help="ARM binary (default: target/<board's target>/release/convnext-edge)")
    a = ap.parse_args()
    known = boards()
    so = plugin()
    print("| board | qemu -cpu | model | precision | M guest insns / inference | tract kernels |")
    print("|---|---|---|---|---|---|")
    for name in a.boards.split(","):
        if name not in known:
            sys.exit(f"unknown board {name}; known: {', '.join(known)}")
        board = known[name]
        binary = a.bin or os.path.join(ROOT, "target", board["target"], "release", "convnext-edge")
        for spec in a.models:
            model, _, precision = spec.partition(":")
            n0, _ = count(board, binary, so, model, precision or "auto", a.iters)
            n1, r = count(board, binary, so, model, precision or "auto", a.iters + 1)
            kernels = ", ".join(k for k in r["kernels"])
            print(f"| {name} | {board['cpu']} | {os.path.basename(model)} | {r['precision']} | "
                  f"{(n1 - n0) / 1e6:.1f} | {kernels} |", flush=True)


if __name__ == "__main__":
    main()
