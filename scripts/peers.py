#!/usr/bin/env python3
"""Times the peers of tilefuse's benchmark cases on this GPU, in the same run.

Writes JSON in the schema of `tilefuse bench --json` ("tilefuse-bench/1"), so that
`tilefuse summary bench.json peers.json` prints both side by side. Uses the PyTorch (and, for
later ops, JAX) already installed on the GPU machine; runs as part of the GPU bundle's run.sh.

Each op adds its peers as one function in PEERS (`--ops` picks some); op and case strings must match the ones
tilefuse's own cases use, so that the summary groups them together.
"""

import argparse
import json
import math
import statistics
import sys

SCHEMA = "tilefuse-bench/1"
COPY_BYTES = 256 << 20  # tilefuse's copy case: "256 MiB"
L2_DEFEAT_BYTES = 256 << 20  # rotate weight copies until they total this much
GEMM_SHAPES = [(8192, 8192), (28672, 8192), (8192, 28672), (36864, 9216)]
GEMM_TOKENS = [8, 16, 32, 64]
SPARSITIES = [0.3, 0.5, 0.7, 0.8, 0.9]  # tilefuse's spmm cases (src/spmm/bench.rs)


def time_cuda(torch, run, warmup=3, samples=11, min_sample_ms=2.0):
    """Median and min per-run time in µs, by CUDA events around repeated runs."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()

    def timed(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / repeats

    repeats = max(1, min(10_000, math.ceil(min_sample_ms * 1e3 / max(timed(1), 0.1))))
    times = [timed(repeats) for _ in range(samples)]
    return statistics.median(times), min(times), len(times)


def record(op, case, implementation, device, timing, bytes_moved, flops):
    median_us, min_us, samples = timing
    return {
        "op": op,
        "case": case,
        "backend": "cuda",
        "implementation": implementation,
        "device": device,
        "median_us": median_us,
        "min_us": min_us,
        "samples": samples,
        "bytes": bytes_moved,
        "flops": flops,
        "gbps": bytes_moved / median_us / 1e3,
        "tflops": flops / median_us / 1e6,
    }


def peer_copy(torch, device):
    """Device-to-device copy, the bandwidth baseline (tilefuse's op "copy")."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.int32, device="cuda")
    dst = torch.empty_like(src)
    timing = time_cuda(torch, lambda: dst.copy_(src))
    yield record("copy", f"{COPY_BYTES >> 20} MiB", "torch", device, timing, 2 * COPY_BYTES, 0)


def spmm_case(m, k, n, sparsity):
    return f"m={m} k={k} n={n} s={round(sparsity * 100)}%"


def rotating(weights, apply):
    """A run function that uses the next weight copy on each call (L2 defeated)."""
    turn = [0]

    def run():
        w = weights[turn[0] % len(weights)]
        turn[0] += 1
        apply(w)

    return run


def peer_gemm(torch, device):
    """tilefuse's op "spmm": dense fp16 y = x · wᵀ through cuBLAS (torch.matmul; one timing,
    reported under every sparsity's case name) and cuSPARSE CSR (torch.sparse.mm on the
    pruned weight), L2 defeated by rotating copies of the weight."""
    for m, k in GEMM_SHAPES:
        weight_bytes = 2 * m * k
        copies = max(1, math.ceil(L2_DEFEAT_BYTES / weight_bytes))
        weights = [torch.randn(m, k, dtype=torch.float16, device="cuda") for _ in range(copies)]
        for n in GEMM_TOKENS:
            x = torch.randn(n, k, dtype=torch.float16, device="cuda")
            y = torch.empty(n, m, dtype=torch.float16, device="cuda")
            timing = time_cuda(torch, rotating(weights, lambda w: torch.matmul(x, w.t(), out=y)))
            moved = 2 * (m * k + n * k + n * m)
            for sparsity in SPARSITIES:
                yield record("spmm", spmm_case(m, k, n, sparsity), "torch-cublas", device, timing, moved, 2 * m * n * k)
        del weights
        torch.cuda.empty_cache()
        for sparsity in SPARSITIES:
            try:
                csr = []
                # torch's CSR holds 64-bit indices: 10 bytes per nonzero.
                for _ in range(max(1, math.ceil(L2_DEFEAT_BYTES / (10 * (1 - sparsity) * m * k)))):
                    w = torch.randn(m, k, dtype=torch.float16, device="cuda")
                    w = w * (torch.rand(m, k, device="cuda") >= sparsity)
                    csr.append(w.to_sparse_csr())
                    del w
                values, columns, rows = csr[0].values(), csr[0].col_indices(), csr[0].crow_indices()
                csr_bytes = values.numel() * (values.element_size() + columns.element_size()) \
                    + rows.numel() * rows.element_size()
                for n in GEMM_TOKENS:
                    xt = torch.randn(k, n, dtype=torch.float16, device="cuda")
                    timing = time_cuda(torch, rotating(csr, lambda w: torch.sparse.mm(w, xt)))
                    moved = csr_bytes + 2 * (n * k + n * m)
                    yield record("spmm", spmm_case(m, k, n, sparsity), "torch-cusparse-csr", device, timing, moved, 2 * m * n * k)
            except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                print(f"peer_gemm: cuSPARSE CSR m={m} k={k} s={sparsity}: {e}", flush=True)
            csr = None
            torch.cuda.empty_cache()


SCAN_SHAPES = [(16, 8192, 256), (64, 2048, 256), (4, 65536, 128)]  # tilefuse's scan cases


def time_host(run, warmup=3, samples=11, min_sample_ms=2.0):
    """Median and min per-run time in µs of a function that waits for its own result."""
    import time

    for _ in range(warmup):
        run()

    def timed(repeats):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) * 1e6 / repeats

    repeats = max(1, min(10_000, math.ceil(min_sample_ms * 1e3 / max(timed(1), 1.0))))
    times = [timed(repeats) for _ in range(samples)]
    return statistics.median(times), min(times), len(times)


def jax_scan_row(jax, jnp):
    """One batch row of the scan through JAX's lax.associative_scan with popjaxrl's reset
    operator, the carried state prepended as (1, h0, 0) and the decay materialised per step,
    as popjaxrl does."""

    def binary_operator_reset(q_i, q_j):
        a_i, b_i, c_i = q_i
        a_j, b_j, c_j = q_j
        return (
            (a_j * a_i) * (1 - c_j) + a_j * c_j,
            (a_j * b_i + b_j) * (1 - c_j) + b_j * c_j,
            c_i * (1 - c_j) + c_j,
        )

    def one_row(decay, u, reset, h0):
        steps = u.shape[0]
        a = jnp.concatenate([jnp.ones((1,) + decay.shape, decay.dtype), jnp.broadcast_to(decay, (steps,) + decay.shape)])
        b = jnp.concatenate([h0[None], u])
        c = jnp.concatenate([jnp.zeros((1, 1), u.real.dtype), reset[:, None].astype(u.real.dtype)])
        _, h, _ = jax.lax.associative_scan(binary_operator_reset, (a, b, c))
        return h[1:]

    return one_row


def peer_scan(torch, device):
    """JAX's lax.associative_scan with popjaxrl's reset operator and the carried state
    prepended as (1, h0, 0), complex64, 1% resets (tilefuse's op "scan")."""
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        print(f"peer_scan: JAX unavailable ({e}); skipped", flush=True)
        return
    torch.cuda.empty_cache()

    scan = jax.jit(jax.vmap(jax_scan_row(jax, jnp), in_axes=(None, 0, 0, 0)))
    key = jax.random.PRNGKey(0)
    for b, t, p in SCAN_SHAPES:
        k1, k2, k3, k4 = jax.random.split(key, 4)
        decay = (0.9 * jnp.exp(1j * jax.random.uniform(k1, (p,)))).astype(jnp.complex64)
        u = (jax.random.normal(k2, (b, t, p)) + 1j * jax.random.normal(k3, (b, t, p))).astype(jnp.complex64)
        reset = jax.random.uniform(k4, (b, t)) < 0.01
        h0 = jnp.zeros((b, p), jnp.complex64)
        timing = time_host(lambda: scan(decay, u, reset, h0).block_until_ready())
        moved = 2 * b * t * p * 8 + b * t + b * p * 8
        # The recurrence's work, as tilefuse counts it: a complex multiply-add (8 FLOP) per element.
        yield record("scan", f"c64 b={b} t={t} p={p} resets=1%", "jax-associative-scan", device, timing, moved, 8 * b * t * p)
        del u


def peer_scan_backward(torch, device):
    """jax.vjp through peer_scan's associative scan (tilefuse's op "scan-backward"): du, da
    (summed over the batch: a is shared) and the cotangent of h0 from every state's
    cotangent, complex64, 1% resets."""
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        print(f"peer_scan_backward: JAX unavailable ({e}); skipped", flush=True)
        return
    torch.cuda.empty_cache()

    forward = jax.vmap(jax_scan_row(jax, jnp), in_axes=(None, 0, 0, 0))

    @jax.jit
    def backward(decay, u, reset, h0, dh):
        _, vjp = jax.vjp(lambda decay, u, h0: forward(decay, u, reset, h0), decay, u, h0)
        return vjp(dh)

    key = jax.random.PRNGKey(1)
    for b, t, p in SCAN_SHAPES:
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        decay = (0.9 * jnp.exp(1j * jax.random.uniform(k1, (p,)))).astype(jnp.complex64)
        u = (jax.random.normal(k2, (b, t, p)) + 1j * jax.random.normal(k3, (b, t, p))).astype(jnp.complex64)
        k5, k6 = jax.random.split(k5)
        dh = (jax.random.normal(k5, (b, t, p)) + 1j * jax.random.normal(k6, (b, t, p))).astype(jnp.complex64)
        reset = jax.random.uniform(k4, (b, t)) < 0.01
        h0 = jnp.zeros((b, p), jnp.complex64)
        timing = time_host(lambda: jax.block_until_ready(backward(decay, u, reset, h0, dh)))
        # jax.vjp runs the forward too: the case that recomputes the states (u read by a
        # forward pass, then dh and u read and du written).
        moved = 4 * b * t * p * 8 + 2 * b * t
        yield record("scan-backward", f"c64 b={b} t={t} p={p} resets=1% backward recompute", "jax-vjp-associative-scan", device, timing, moved, 14 * b * t * p)
        del u, dh


ATTENTION_LENGTHS = [8192, 32768]
ATTENTION_MASKS = ["causal", "causal window 4096", "streaming 128+4096", "random 10%"]


def attention_mask_mods(torch, l):
    """FlexAttention mask_mods of ATTENTION_MASKS at length l (src/attention/bench.rs)."""
    blocks = l // 128
    picks = torch.rand(blocks, blocks, generator=torch.Generator().manual_seed(10)) < 0.1
    picks = picks.to("cuda")
    return {
        "causal": lambda b, h, qi, ki: qi >= ki,
        "causal window 4096": lambda b, h, qi, ki: (qi >= ki) & (qi - ki < 4096),
        "streaming 128+4096": lambda b, h, qi, ki: (ki < 128) | ((qi >= ki) & (qi - ki < 4096)),
        "random 10%": lambda b, h, qi, ki: picks[qi // 128, ki // 128],
    }


def peer_attention(torch, device):
    """tilefuse's op "attention" (b=1, hq=32, d=128, f16): PyTorch SDPA with the flash
    backend on dense causal attention, and FlexAttention (torch.compile'd, create_block_mask
    with 128-blocks) on each mask. FLOPs count the computed blocks, 4·d per (query, key)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        print(f"peer_attention: {e}; skipped", flush=True)
        return
    heads, d = 32, 128
    flex = torch.compile(flex_attention)
    for l in ATTENTION_LENGTHS:
        q, k, v = (torch.randn(1, heads, l, d, dtype=torch.float16, device="cuda") for _ in range(3))
        moved = 2 * 4 * l * heads * d
        name = lambda mask: f"b=1 hq={heads} d={d} l={l} {mask}"  # noqa: E731
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                timing = time_cuda(torch, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
            yield record("attention", name("causal"), "torch-sdpa-flash", device, timing, moved, 4 * d * heads * l * (l + 1) // 2)
        except Exception as e:  # noqa: BLE001
            print(f"peer_attention: SDPA flash l={l}: {e}", flush=True)
        mask_mods = attention_mask_mods(torch, l)
        for mask in ATTENTION_MASKS:
            try:
                block_mask = create_block_mask(mask_mods[mask], None, None, l, l, device="cuda", BLOCK_SIZE=128)
                density = 1.0 - float(block_mask.sparsity()) / 100.0
                timing = time_cuda(torch, lambda: flex(q, k, v, block_mask=block_mask))
                flops = int(4 * d * heads * l * l * density)
                yield record("attention", name(mask), "flexattention", device, timing, moved, flops)
            except Exception as e:  # noqa: BLE001
                print(f"peer_attention: FlexAttention {mask} l={l}: {e}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    # Decode-shaped calls (src/attention/bench.rs): 1 and 16 queries against 32k keys, GQA
    # 32/8, no mask, through SDPA's default choice and its flash and cuDNN backends.
    kv_heads, lk = 8, 32768
    k, v = (torch.randn(1, kv_heads, lk, d, dtype=torch.float16, device="cuda") for _ in range(2))
    for lq in [1, 16]:
        q = torch.randn(1, heads, lq, d, dtype=torch.float16, device="cuda")
        name = f"b=1 hq={heads} hkv={kv_heads} d={d} lq={lq} lk={lk} dense"
        moved = 2 * 2 * (lq * heads + lk * kv_heads) * d
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
        for backend, label in [(None, "torch-sdpa"), (SDPBackend.FLASH_ATTENTION, "torch-sdpa-flash"),
                               (SDPBackend.CUDNN_ATTENTION, "torch-sdpa-cudnn")]:
            try:
                if backend is None:
                    timing = time_cuda(torch, sdpa)
                else:
                    with sdpa_kernel(backend):
                        timing = time_cuda(torch, sdpa)
                yield record("attention", name, label, device, timing, moved, 4 * d * heads * lq * lk)
            except Exception as e:  # noqa: BLE001
                print(f"peer_attention: {label} {name}: {e}", flush=True)
    del k, v
    torch.cuda.empty_cache()


def peer_attention_backward(torch, device):
    """tilefuse's op "attention-backward" (b=1, hq=32, d=128, f16, the forward's masks): the
    backward alone (torch.autograd.grad on a kept graph) of PyTorch SDPA with the flash and
    cuDNN backends on dense causal attention, and of FlexAttention (torch.compile'd,
    128-blocks) on each mask. FLOPs count the computed blocks at 2.5 times the forward's
    4·d per (query, key), as FlashAttention counts them."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        print(f"peer_attention_backward: {e}; skipped", flush=True)
        return
    heads, d = 32, 128
    flex = torch.compile(flex_attention)

    def backward_timing(forward, inputs):
        out = forward()
        grad = torch.randn_like(out)
        return time_cuda(torch, lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True))

    for l in ATTENTION_LENGTHS:
        q, k, v = (torch.randn(1, heads, l, d, dtype=torch.float16, device="cuda", requires_grad=True)
                   for _ in range(3))
        moved = 2 * 8 * l * heads * d
        name = lambda mask: f"b=1 hq={heads} d={d} l={l} {mask}"  # noqa: E731
        causal_flops = int(2.5 * 4 * d * heads * l * (l + 1) // 2)
        for backend, label in [(SDPBackend.FLASH_ATTENTION, "torch-sdpa-flash"),
                               (SDPBackend.CUDNN_ATTENTION, "torch-sdpa-cudnn")]:
            try:
                with sdpa_kernel(backend):
                    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
                    timing = backward_timing(sdpa, (q, k, v))
                yield record("attention-backward", name("causal"), label, device, timing, moved, causal_flops)
            except Exception as e:  # noqa: BLE001
                print(f"peer_attention_backward: {label} l={l}: {e}", flush=True)
        mask_mods = attention_mask_mods(torch, l)
        for mask in ATTENTION_MASKS:
            try:
                block_mask = create_block_mask(mask_mods[mask], None, None, l, l, device="cuda", BLOCK_SIZE=128)
                density = 1.0 - float(block_mask.sparsity()) / 100.0
                timing = backward_timing(lambda: flex(q, k, v, block_mask=block_mask), (q, k, v))
                flops = int(2.5 * 4 * d * heads * l * l * density)
                yield record("attention-backward", name(mask), "flexattention", device, timing, moved, flops)
            except Exception as e:  # noqa: BLE001
                print(f"peer_attention_backward: FlexAttention {mask} l={l}: {e}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


# tilefuse op -> its peers
PEERS = {
    "copy": peer_copy,
    "spmm": peer_gemm,
    "scan": peer_scan,
    "scan-backward": peer_scan_backward,
    "attention": peer_attention,
    "attention-backward": peer_attention_backward,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--ops", default=",".join(PEERS), help="comma-separated tilefuse ops whose peers run")
    args = parser.parse_args()
    ops = [op for op in args.ops.split(",") if op]
    unknown = [op for op in ops if op not in PEERS]
    if unknown:
        sys.exit(f"peers.py: no peers for {unknown}; known: {list(PEERS)}")
    try:
        import torch
    except ImportError as e:
        sys.exit(f"peers.py needs PyTorch: {e}")
    if not torch.cuda.is_available():
        sys.exit("peers.py: PyTorch sees no CUDA device")
    device = torch.cuda.get_device_name()
    results = []
    for op in ops:
        for r in PEERS[op](torch, device):
            print(f"{r['op']:10} {r['case']:28} {r['implementation']:14} {r['median_us']:10.1f} us"
                  f" {r['gbps']:8.1f} GB/s {r['tflops']:7.2f} TFLOP/s", flush=True)
            results.append(r)
    doc = {"schema": SCHEMA, "tool": f"peers.py (torch {torch.__version__})",
           "devices": {"cuda": device}, "results": results}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
