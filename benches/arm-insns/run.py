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

--symbols N also prints, per model, the N functions that execute the most instructions per
inference (the same N / N+1 difference, per function of the binary's symbol table; code outside
the binary — libc, the loader — is one line): where the count goes, as a profile would show.
Standard library only.
"""

import argparse
import bisect
import collections
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile

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


def run_counted(board, argv, so, pcs=None):
    """Runs `argv` under the board's qemu CPU with the plugin: the guest instructions, stdout,
    and with `pcs` (a directory) the per-block counts and the guest address the program was
    loaded at."""
    sysroot = "/usr/aarch64-linux-gnu" if board["qemu"] == "qemu-aarch64" else "/usr/arm-linux-gnueabihf"
    plugin_arg, log_args = so, []
    if pcs:
        plugin_arg += f",pcs={pcs}/blocks.txt"
        log_args = ["-d", "page", "-D", f"{pcs}/page.log"]
    cmd = [board["qemu"], "-L", sysroot, "-cpu", board["cpu"], "-plugin", plugin_arg, *log_args,
           *argv]
    env = dict(os.environ, **board["env"])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    m = re.search(r"guest_insns (\d+)", p.stderr)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
    blocks = None
    if pcs:
        blocks = (load_base(f"{pcs}/page.log"), read_blocks(f"{pcs}/blocks.txt"))
    return int(m.group(1)), p.stdout, blocks


def count(board, binary, so, model, precision, iters, pcs=None):
    """[`run_counted`] of our bench on `model`, with its result."""
    argv = [binary, "bench", "--model", model, "--precision", precision, "--threads", "1",
            "--warmup", "0", "--iters", str(iters), "--json", "-"]
    n, out, blocks = run_counted(board, argv, so, pcs)
    return n, json.loads(out)["results"][0], blocks


def peer(lib_dir):
    """ort_peer.c built against onnxruntime's arm64 library in `lib_dir`."""
    exe = os.path.join(ROOT, "target", "arm-insns", "ort_peer")
    src = os.path.join(HERE, "ort_peer.c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-o", exe, src, "-L", lib_dir,
                        "-l:libonnxruntime.so.1", f"-Wl,-rpath,{os.path.abspath(lib_dir)}"],
                       check=True)
    return exe


def load_base(page_log):
    """qemu-user maps the program before its loader; -d page logs that first executable
    mapping, whose start is where the (position-independent) binary's address 0 lands, and
    its end where the binary's code ends.
    qemu-arm logs the page of the kernel's user helpers (at 0xffff0000) before it."""
    with open(page_log) as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) [0-9a-f]+ r-x", line)
            if m and int(m.group(1), 16) != 0xFFFF0000:
                return int(m.group(1), 16), int(m.group(2), 16)
    raise RuntimeError(f"{page_log}: no executable mapping logged")


def read_blocks(path):
    """Per translated block: its address, instructions executed in all, executions, bytes."""
    with open(path) as f:
        rows = (line.split() + [""] for line in f)
        return [(int(a, 16), int(n) * int(e), int(e), code) for a, n, e, code, *_ in rows]


def symbol_table(binary):
    nm = "aarch64-linux-gnu-nm" if "aarch64" in binary else "arm-linux-gnueabihf-nm"
    out = subprocess.run([nm, "-C", "-n", "--defined-only", binary], capture_output=True,
                         text=True, check=True).stdout
    starts, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            starts.append(int(parts[0], 16))
            names.append(re.sub(r"::h[0-9a-f]{16}$", "", parts[2]))
    return starts, names


def by_symbol(blocks, table, size):
    """Instructions per function; blocks outside the binary's `size` bytes are one entry."""
    (base, _), counted = blocks
    starts, names = table
    totals = collections.Counter()
    for addr, n, *_ in counted:
        offset = addr - base
        i = bisect.bisect_right(starts, offset) - 1
        inside = 0 <= offset < size and i >= 0
        totals[names[i] if inside else "[outside the binary: libc, loader]"] += n
    return totals


# The llvm-mca scheduling model for each board core (see shared notes: LLVM has no A76 or A78
# model, and -mcpu=cortex-a76 falls back to the A57's; Neoverse N1 is the A76's derivative and
# stands in for both; the A72 is modelled as the A57 it derives from). 32-bit code (the armv7
# board, run as qemu-arm's cortex-a15) is estimated on LLVM's 32-bit cortex-a57 model, which
# stands in for a Pi 4's A72 running 32-bit Pi OS: LLVM has no 32-bit model of the A7 or A53.
MCA_MODEL = {"cortex-a53": "cortex-a53", "cortex-a57": "cortex-a57", "cortex-a72": "cortex-a72",
             "cortex-a76": "neoverse-n1", "neoverse-n1": "neoverse-n1"}
MCA_MODEL_32 = {"cortex-a15": "cortex-a57"}
MCA_ITERATIONS = 100
# llvm-mc / llvm-mca target options for 64- and 32-bit code.
TRIPLE = {True: ("aarch64", "+neon,+fullfp16,+dotprod,+crc,+crypto"), False: ("armv7", "+neon,+vfp4")}


def block_cycles(codes, mcpu, arm64=True, llvm="19"):
    """Steady-state cycles of one execution of each block (hex bytes) on `mcpu`, by llvm-mca:
    each block disassembled by llvm-mc, all of them analysed in one llvm-mca run as regions.
    A block given as None (32-bit code outside our binary, or Thumb: the plugin's bytes do not
    say which mode they are in) counts one cycle per 4 bytes."""
    triple, attrs = TRIPLE[arm64]

    def disassemble(code):
        if code is None:
            return []
        text = " ".join(f"0x{code[i:i + 2]}" for i in range(0, len(code), 2))
        p = subprocess.run([f"llvm-mc-{llvm}", "--disassemble", f"-triple={triple}",
                            f"-mattr={attrs}"], input=text, capture_output=True, text=True)
        return [line.strip() for line in p.stdout.splitlines()
                if line.strip() and not line.strip().startswith(".")]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        asm = list(pool.map(disassemble, codes))
    src = []
    for i, lines in enumerate(asm):
        if lines:
            src += [f"# LLVM-MCA-BEGIN b{i}", *lines, f"# LLVM-MCA-END b{i}"]
    p = subprocess.run([f"llvm-mca-{llvm}", f"-mtriple={triple}", f"-mcpu={mcpu}",
                        f"-mattr={attrs}", f"-iterations={MCA_ITERATIONS}", "-all-views=false",
                        "-summary-view"],
                       input="\n".join(src) + "\n", capture_output=True, text=True)
    cycles = {}
    region = None
    for line in p.stdout.splitlines():
        m = re.match(r"\[\d+\] Code Region - b(\d+)", line)
        if m:
            region = int(m.group(1))
        m = re.match(r"Total Cycles:\s+(\d+)", line)
        if m and region is not None:
            cycles[region] = int(m.group(1)) / MCA_ITERATIONS
    analysed = sum(1 for lines in asm if lines)
    if len(cycles) != analysed:
        raise RuntimeError(f"llvm-mca analysed {len(cycles)} of {analysed} blocks: "
                           f"{p.stderr[-2000:]}")
    return [cycles[i] if asm[i] else len(code or "") / 8 for i, code in enumerate(codes)]


def arm_mode(addr, code):
    """Whether a 32-bit block is ARM code, not Thumb (gcc's armhf default, which tract's
    assembly kernels are built with): word-aligned, and nearly every word's condition field
    `always` (0xE) or NEON's unconditional space (0xF)."""
    words = [code[i:i + 8] for i in range(0, len(code), 8)]
    arm = sum(1 for w in words if len(w) == 8 and w[6] in "eEfF")
    return addr % 4 == 0 and arm >= 0.75 * len(words)


def estimated_cycles(b0, b1, mcpu, arm64):
    """Cycles of one inference: per block, the executions the N+1 run has over the N run,
    times its llvm-mca cycles. In 32-bit code, only blocks in the binary's own code are
    analysed (see `block_cycles`)."""
    executions = collections.Counter()
    analysed = {}
    for sign, ((start, end), blocks) in ((-1, b0), (1, b1)):
        for addr, _, e, code in blocks:
            executions[code] += sign * e
            analysed[code] = arm64 or (start <= addr < end and arm_mode(addr, code))
    hot = [(code, e) for code, e in executions.items() if e > 0 and code]
    cycles = block_cycles([code if analysed[code] else None for code, _ in hot], mcpu, arm64)
    return sum(e * c for (_, e), c in zip(hot, cycles))


def row(name, board, model, precision, n0, n1, b0, b1, cycles, kernels):
    """One table row: instructions per inference and, with `cycles`, the estimate and IPC."""
    est = ""
    if cycles:
        arm64 = board["qemu"] == "qemu-aarch64"
        mcpu = (MCA_MODEL if arm64 else MCA_MODEL_32).get(board["cpu"])
        c = estimated_cycles(b0, b1, mcpu, arm64) if mcpu else None
        est = f"| {mcpu} | {c / 1e6:.1f} | {(n1 - n0) / c:.2f} " if c else "| - | - | - "
    return (f"| {name} | {board['cpu']} | {os.path.basename(model)} | {precision} | "
            f"{(n1 - n0) / 1e6:.1f} {est}| {kernels} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="MODEL[:auto|f32|f16|int8]")
    ap.add_argument("--boards", default="pi4,pi5")
    ap.add_argument("--iters", type=int, default=1, help="N: counts runs with N and N+1 inferences")
    ap.add_argument("--bin", help="ARM binary (default: target/<board's target>/release/convnext-edge)")
    ap.add_argument("--symbols", type=int, default=0, metavar="N",
                    help="also list the N functions with the most instructions per inference")
    ap.add_argument("--peer", metavar="DIR",
                    help="also run onnxruntime's arm64 libonnxruntime.so.1 (from the npm package "
                    "onnxruntime-node 1.22.0) in DIR on each model, one thread, as the peer row")
    ap.add_argument("--peer-io", default="input,logits", help="the models' input and output names")
    ap.add_argument("--peer-size", type=int, default=224, help="the models' input size")
    ap.add_argument("--cycles", action="store_true",
                    help="also estimate cycles per inference with llvm-mca-19 (the board core's "
                    "scheduling model, weighted by each block's executions)")
    a = ap.parse_args()
    known = boards()
    so = plugin()
    cycles_cols = ("| llvm-mca model | M est. cycles / inference | IPC ", "|---|---|---")
    print("| board | qemu -cpu | model | precision | M guest insns / inference "
          f"{cycles_cols[0] if a.cycles else ''}| tract kernels |")
    print(f"|---|---|---|---|---{cycles_cols[1] if a.cycles else ''}|---|")
    for name in a.boards.split(","):
        if name not in known:
            sys.exit(f"unknown board {name}; known: {', '.join(known)}")
        board = known[name]
        binary = a.bin or os.path.join(ROOT, "target", board["target"], "release", "convnext-edge")
        profiles = []
        if a.symbols:
            table, size = symbol_table(binary), os.path.getsize(binary)
        for spec in a.models:
            model, _, precision = spec.partition(":")
            with tempfile.TemporaryDirectory() as d0, tempfile.TemporaryDirectory() as d1:
                pcs = (d0, d1) if a.symbols or a.cycles else (None, None)
                n0, _, b0 = count(board, binary, so, model, precision or "auto", a.iters, pcs[0])
                n1, r, b1 = count(board, binary, so, model, precision or "auto", a.iters + 1, pcs[1])
            kernels = ", ".join(k for k in r["kernels"])
            print(row(name, board, model, r["precision"], n0, n1, b0, b1, a.cycles, kernels),
                  flush=True)
            if a.peer and board["qemu"] == "qemu-aarch64":
                exe = peer(a.peer)
                io = a.peer_io.split(",")
                with tempfile.TemporaryDirectory() as d0, tempfile.TemporaryDirectory() as d1:
                    pcs = (d0, d1) if a.cycles else (None, None)
                    runs = [run_counted(board, [exe, model, *io, str(a.peer_size), str(n)], so, d)
                            for n, d in ((a.iters, pcs[0]), (a.iters + 1, pcs[1]))]
                print(row(name, board, model, "onnxruntime", runs[0][0], runs[1][0], runs[0][2],
                          runs[1][2], a.cycles, "onnxruntime 1.22 (MLAS)"), flush=True)
            if a.symbols:
                per = by_symbol(b1, table, size)
                per.subtract(by_symbol(b0, table, size))
                profiles.append((f"{name} {os.path.basename(model)} {r['precision']}", n1 - n0, per))
        for title, total, per in profiles:
            print(f"\n{title}: top {a.symbols} functions, M guest insns / inference\n")
            print("| M insns | share | function |")
            print("|---|---|---|")
            for sym, n in per.most_common(a.symbols):
                print(f"| {n / 1e6:.1f} | {100 * n / total:.1f}% | `{sym[:140]}` |")


if __name__ == "__main__":
    main()
