"""The GPU path on one GPU (``make gpu-check``): a table on stdout, ``OUT/gpu_check.json`` beside
it, and a non-zero exit when any check failed.

The checks run the project's own commands, as a user does, on a Llama-3.1-8B-shaped slice (two
layers, the full 128,256-token vocabulary, seq 4096) with random weights and the bundled Llama-3
tokenizer and corpus:

- logits of the layer spec the machine can run (Transformer Engine where it is installed, else
  local) against HF ``LlamaForCausalLM`` in fp32;
- a width-grown (MSG-masked) model at ``m = 0`` against its base, in fp32;
- ``pretrain_motif.py`` in bf16 with the distributed optimizer: the loss falls, tokens/s, and MFU by
  Megatron-LM's ``num_floating_point_operations`` against the GPU's bf16 peak (its data sheet and
  a bf16 matmul measured here); the run stops, saves, and resumes where it stopped;
- packed SFT rows against each example alone (THD on TE, the dense mask on local);
- a KTO run with its cached reference log-probs;
- ``tools/evaluate.py`` perplexity and the lm-eval ``motif`` adapter on a local task.

Without CUDA it says so in one line and exits 0. ``--tiny`` runs the same sequence on the tiny
preset in fp32 on any machine, which is how the CPU tests keep this script working.
``--validate`` trains nothing and needs no GPU: every command line of the GPU plan goes through
its script's own parser and the trainer's configuration checks, and the width growth through
the growth tool's plan at the 8B slice's shapes; it exits 0 only when all are accepted. A row
that cannot run says why (``ok: null`` with ``why``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from motif_megatron.errors import STOPPED_EARLY  # noqa: E402
from motif_megatron.model.flops import peak_flops, train_flops  # noqa: E402


@dataclass(frozen=True)
class Plan:
    preset: str
    layers: int
    seq: int
    steps: int
    global_batch: int
    bf16: bool
    lr: float
    widen: tuple[str, ...]
    logits_atol: float
    packed_atol: float

    @classmethod
    def gpu(cls, layers: int, seq: int, steps: int) -> Plan:
        # fp32 logits: TE's and HF's GEMMs differ only in summation order (~1e-5 relative on
        # logits of magnitude ~1 at this init); a misrouted head or wrong RoPE moves them by ~1.
        # Packed vs alone runs in bf16 (flash attention has no fp32): per-example mean token
        # losses near ln(128256) = 11.8 agree to ~2^-8 relative, so 0.05 absolute.
        return cls(
            "llama3.1-8b", layers, seq, steps, 8, True, 1e-3,
            # MSG keeps the 8 KV groups and widens each from 4 to 5 heads
            ("--hidden-size", "4608", "--ffn-hidden-size", "15360",
             "--num-attention-heads", "40", "--num-query-groups", "8"),
            1e-3, 0.05,
        )  # fmt: skip

    @classmethod
    def tiny(cls) -> Plan:
        return cls(
            "tiny", 2, 64, 12, 4, False, 1e-2,
            ("--hidden-size", "80", "--ffn-hidden-size", "208",
             "--num-attention-heads", "16", "--num-query-groups", "4"),
            1e-4, 1e-4,
        )  # fmt: skip


class CheckFailed(Exception):
    pass


TRAINERS = {"pretrain_motif.py": (), "posttrain_motif.py": ("sft", "kto")}


def accept(script: str, argv: list[str]) -> None:
    """``script`` would accept ``argv``: its own parser and, for the trainers, the configuration
    checks a run makes before it builds anything (raises CheckFailed with the refusal)."""
    import contextlib
    import importlib.util
    import io

    from motif_megatron.errors import UserError

    name, err = Path(script).name, io.StringIO()
    if TRAINERS.get(name) and (not argv or argv[0] not in TRAINERS[name]):
        raise CheckFailed(f"{name} refuses it: the first argument must be one of {TRAINERS[name]}")
    try:
        with contextlib.redirect_stderr(err):
            if name in TRAINERS:
                from motif_megatron.posttrain import kto, sft
                from motif_megatron.training.arguments import TrainConfig, parse_configs

                method = {"sft": sft.SFTConfig, "kto": kto.KTOConfig}.get(argv[0])
                configs = (TrainConfig,) if method is None else (TrainConfig, method)
                train = parse_configs(argv[1:] if method else argv, "", configs)[0]
                train.check(1, require_data_path=method is None)
            else:
                spec = importlib.util.spec_from_file_location(name[:-3], ROOT / script)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                saved, sys.argv = sys.argv, [script, *argv]
                try:
                    module.parse_args()
                finally:
                    sys.argv = saved
    except UserError as refused:
        raise CheckFailed(f"{name} refuses it: {refused}") from None
    except SystemExit:
        raise CheckFailed(f"{name} refuses it: {err.getvalue().strip()}") from None


class Checks:
    """Runs the checks in order; each becomes a row of the table and of the JSON."""

    def __init__(self, out: Path, plan: Plan, validate: bool = False) -> None:
        self.out, self.plan, self.work = out, plan, out / "work"
        self.validate, self.commands = validate, 0
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []

    def run(self, script: str, *args: str, status: int = 0, env: dict | None = None) -> str:
        """Run a project script (with ``env`` added to the environment); any exit status but
        ``status`` fails the check. Validating, only check that the script accepts the
        arguments."""
        if self.validate:
            accept(script, list(map(str, args)))
            self.commands += 1
            return ""
        cmd = [sys.executable, str(ROOT / script), *map(str, args)]
        environ = {**os.environ, **(env or {})}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=environ)
        if done.returncode != status:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise CheckFailed(f"{script} exited {done.returncode}: {' '.join(tail)}")
        return done.stdout

    def accepted(self) -> tuple[bool, str, dict]:
        """A validated check's row: every command so far was accepted."""
        return True, "accepted", {"commands_accepted": self.commands}

    def check(self, name: str, fn) -> None:
        start, self.commands = time.perf_counter(), 0
        try:
            ok, value, extra = fn()
        except CheckFailed as failed:
            ok, value, extra = False, None, {"error": str(failed)}
        row = {"name": name, "ok": ok, "value": value, **extra}
        row["seconds"] = round(time.perf_counter() - start, 1)
        self.rows.append(row)
        shown = "n/a" if ok is None else ("ok" if ok else "FAIL")
        detail = {k: v for k, v in row.items() if k not in ("name", "ok")}
        print(f"{name:<24} {shown:<5} {json.dumps(detail, default=str)}", flush=True)


def environment(plan: Plan) -> dict:
    import megatron.core

    from motif_megatron.model.builder import te_available

    te = None
    if te_available():
        import transformer_engine

        te = transformer_engine.__version__
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else "none",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "megatron_core": megatron.core.__version__,
        "transformer_engine": te,
        "spec": "te" if te else "local",
        "attention": "TE (flash / cuDNN fused)" if te else "local (unfused, O(s^2) memory)",
        "plan": asdict(plan),
    }


def setup(c: Checks) -> dict[str, Path]:
    """Tokenizer, a random HF slice, its Megatron import and a Korean shard."""
    from motif_megatron.model.presets import random_hf_model
    from motif_megatron.tokenizer.bundled import unpack

    p, w = c.plan, c.work
    tokenizer = unpack("llama3", w / "tokenizer")
    dtype = torch.bfloat16 if p.bf16 else torch.float32
    hf, corpus = w / "hf", w / "ko.jsonl"
    if not c.validate:
        random_hf_model(hf, p.preset, tokenizer, dtype=dtype, num_hidden_layers=p.layers)
        import lzma

        xz = ROOT / "examples/data/corpus/ko-libreoffice-help.jsonl.xz"
        corpus.write_bytes(lzma.decompress(xz.read_bytes()))
    c.run("tools/convert_hf.py", "import", "--hf-dir", hf, "--out", w / "base")
    prefix = w / "ko"
    c.run(
        "tools/preprocess_data.py",
        *("--input", corpus, "--output-prefix", prefix, "--tokenizer-model", tokenizer),
        "--append-eod",
    )
    return {"hf": hf, "base": w / "base", "data": Path(f"{prefix}_text_document"), "text": corpus}


def _max_abs_diff(stdout: str) -> float:
    return float(stdout.strip().splitlines()[-1].split("=", 1)[1])


# fp32 means fp32: cuBLAS (under torch and Transformer Engine alike) would otherwise be free to
# run fp32 GEMMs as TF32 (10-bit mantissa, ~1e-3 relative per GEMM), which the 1e-3 logits
# tolerance does not allow for; the fp32 comparisons run with TF32 off.
FP32 = {"NVIDIA_TF32_OVERRIDE": "0"}

# bf16 logits against HF's fp32: every GEMM output and the final norm round at 2^-8 relative; the
# logits of this random init (std 0.02 weights, 4096-wide normalised states) reach |6|, so the
# rounding alone gives up to ~0.05; a misrouted head, a wrong RoPE or a missed scaling gives ~1.
BF16_LOGITS_ATOL = 0.1


def logits_vs_hf(c: Checks, paths: dict, dtype: str):
    atol = c.plan.logits_atol if dtype == "float32" else BF16_LOGITS_ATOL
    args = ("--load", paths["base"], "--hf-dir", paths["hf"], "--atol", atol)
    out = c.run("tools/check_equivalence.py", *args, "--dtype", dtype, env=FP32)
    if c.validate:
        return c.accepted()
    diff = _max_abs_diff(out)
    return diff <= atol, diff, {"atol": atol, "dtype": dtype, "tf32": "off (cuBLAS override)"}


def masked_at_zero(c: Checks, paths: dict):
    grown = c.work / "grown"
    c.run("tools/expand_checkpoint.py", "--load", paths["base"], "--save", grown, *c.plan.widen)
    args = ("--load", paths["base"], "--load-b", grown, "--atol", c.plan.logits_atol)
    out = c.run("tools/check_equivalence.py", *args, "--dtype", "float32", env=FP32)
    if c.validate:
        return width_plan_accepted(c)
    diff = _max_abs_diff(out)
    extra = {"atol": c.plan.logits_atol, "grown": c.plan.widen, "tf32": "off (cuBLAS override)"}
    return diff <= c.plan.logits_atol, diff, extra


def width_plan_accepted(c: Checks):
    """The growth tool's width plan for the widen flags at the slice's shapes (no weights)."""
    from motif_megatron.errors import UserError
    from motif_megatron.growth.msg import WidthPlan
    from motif_megatron.model.llama import LlamaArgs
    from motif_megatron.model.presets import hf_config

    config = hf_config(c.plan.preset, 128256, num_hidden_layers=c.plan.layers)
    old = LlamaArgs.from_hf_config({"model_type": "llama", **config})
    flags = dict(zip(c.plan.widen[::2], c.plan.widen[1::2], strict=True))
    names = ("--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--num-query-groups")
    try:
        WidthPlan.requested(old, tuple(int(flags[n]) if n in flags else None for n in names))
    except UserError as refused:
        raise CheckFailed(f"the width growth is refused: {refused}") from None
    return c.accepted()


def measured_bf16_peak(n: int = 8192, reps: int = 20) -> float | None:
    """FLOP/s of an ``n x n`` bf16 matmul here (the practical ceiling next to the data sheet)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _pretrain(c: Checks, paths: dict, name: str, *extra: str, status: int = 0) -> Path:
    p, run = c.plan, c.work / "pretrain"
    metrics = c.work / f"{name}.jsonl"
    flags = ["--bf16", "--use-distributed-optimizer"] if p.bf16 else []
    c.run(
        "pretrain_motif.py",
        *("--load", paths["base"], "--save", run, "--data-path", paths["data"]),
        *("--seq-length", p.seq, "--micro-batch-size", 1, "--global-batch-size", p.global_batch),
        *("--train-iters", p.steps, "--lr", p.lr, "--min-lr", p.lr / 10, "--lr-warmup-iters", 2),
        *("--save-interval", p.steps - p.steps // 3, "--metrics-file", metrics),
        *flags,
        *extra,
        status=status,
    )
    return metrics


def _records(metrics: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]


def pretrain_and_resume(c: Checks, paths: dict, peak: float | None):
    """Train, stop at 2/3 (saved), resume to the end; loss falls; throughput from the
    uninterrupted first part, its first two steps left out (warm-up and allocator growth)."""
    from motif_megatron.model.llama import LlamaArgs

    stop = c.plan.steps - c.plan.steps // 3
    first = _pretrain(
        c, paths, "pretrain_until_stop", "--exit-interval", str(stop), status=STOPPED_EARLY
    )
    second = _pretrain(c, paths, "pretrain_resumed")
    if c.validate:
        return c.accepted()
    first, second = _records(first), _records(second)
    if [r["iteration"] for r in first] != list(range(1, stop + 1)):
        raise CheckFailed(f"the first run logged {[r['iteration'] for r in first]}")
    resumed = [r["iteration"] for r in second] == list(range(stop + 1, c.plan.steps + 1))
    losses = [r["loss"] for r in first + second]
    falls = statistics.mean(losses[-3:]) < statistics.mean(losses[:3]) - 0.5
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in first[2:] or first)
    args = LlamaArgs.load(paths["base"])
    flops = train_flops(args, 1, c.plan.seq, args.padded_vocab_size or args.vocab_size)
    achieved = flops / c.plan.seq * tokens_per_s
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    sheet = peak_flops(gpu)
    extra = {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "resumed_at": stop + 1 if resumed else None,
        "tokens_per_s": tokens_per_s,
        "tflops": achieved / 1e12,
        "mfu": achieved / sheet if sheet else None,
        "mfu_vs_measured_matmul": achieved / peak if peak else None,
    }
    return falls and resumed, losses[-1], extra


def _example_losses(model, rows, examples):
    """Summed token loss of every example: packed (segments) and alone, via the forward path."""
    from motif_megatron.model.schedule import Batch, forward_only, lm_objective

    def token_losses(chunk, mb):
        output, _ = lm_objective(chunk, mb)
        return output, lambda out: (
            out,
            {"losses": out.float().reshape(-1) * mb.loss_mask.reshape(-1)},
        )

    packed = Batch(
        rows.tokens, rows.labels, rows.loss_mask, rows.position_ids, segments=rows.segments
    )
    flat = forward_only([model], packed, rows.tokens.shape[0], token_losses)[0]["losses"]
    per_row = flat.reshape(rows.tokens.shape).cpu()
    together = [
        float(per_row[r][rows.segments[r] == s].sum())
        for r in range(rows.tokens.shape[0])
        for s in range(int(rows.segments[r].max()) + 1)
    ]
    alone = []
    for ex in examples:
        ids = torch.tensor([ex.ids])
        n = ids.shape[1] - 1
        mask = torch.tensor([ex.loss_mask[1:]], dtype=torch.float32)
        one = Batch(ids[:, :-1], ids[:, 1:], mask, torch.arange(n)[None])
        alone.append(float(forward_only([model], one, 1, token_losses)[0]["losses"].sum()))
    return together, alone


def packed_sft(c: Checks, paths: dict):
    """Packed rows against each example alone, on the spec this machine runs (in-process)."""
    if c.validate:
        return None, None, {"why": "in-process: no command line to validate"}
    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.posttrain.chat import ChatEncoder
    from motif_megatron.posttrain.packing import pack
    from motif_megatron.posttrain.sft import encode_file

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    dtype = torch.bfloat16 if c.plan.bf16 else torch.float32
    model, _ = build_from_checkpoint(str(paths["base"]), BuildOptions(params_dtype=dtype))
    encoder = ChatEncoder(paths["base"] / "tokenizer", None)
    examples, _ = encode_file(str(ROOT / "examples/data/posttrain/sft.jsonl"), encoder, 256)
    examples = examples[:12]
    rows = pack(examples, 256, encoder.tokenizer.eos_token_id)
    order = [ex for row in _row_order(rows, examples) for ex in row]
    together, alone = _example_losses(model, rows, order)
    counts = [sum(ex.loss_mask[1:]) or 1 for ex in order]
    diff = max(abs(a - b) / n for a, b, n in zip(together, alone, counts, strict=True))
    del model
    parallel.shutdown()
    torch.cuda.empty_cache()
    tol = c.plan.packed_atol
    extra = {
        "atol_per_token": tol,
        "mean_token_loss": sum(alone) / sum(counts),
        "examples": len(order),
        "rows": len(rows.tokens),
    }
    return diff <= tol, diff, extra


def _row_order(rows, examples):
    """The examples in the order ``pack`` placed them (row by row), from the packed tokens."""
    placed, left = [], list(examples)
    for r in range(rows.tokens.shape[0]):
        row = []
        for s in range(int(rows.segments[r].max()) + 1):
            ids = rows.tokens[r][rows.segments[r] == s].tolist()
            match = next(ex for ex in left if ex.ids[:-1] == ids)
            left.remove(match)
            row.append(match)
        placed.append(row)
    return placed


def kto(c: Checks, paths: dict):
    save, metrics = c.work / "kto", c.work / "kto.jsonl"
    c.run(
        "posttrain_motif.py",
        "kto",
        *("--load", paths["base"], "--save", save, "--metrics-file", metrics),
        *("--kto-data", ROOT / "examples/data/posttrain/kto.jsonl", "--train-iters", 2),
        *("--seq-length", 128, "--micro-batch-size", 2, "--global-batch-size", 4),
        *(["--bf16"] if c.plan.bf16 else []),
    )
    if c.validate:
        return c.accepted()
    cached = list((save / "kto_reference").glob("*.pt"))
    losses = [json.loads(x)["loss"] for x in metrics.read_text().splitlines() if '"loss"' in x]
    ok = len(cached) == 1 and bool(losses) and all(math.isfinite(x) for x in losses)
    return ok, losses[-1] if losses else None, {"reference_cache": [p.name for p in cached]}


def evaluate_ppl(c: Checks, paths: dict):
    out = c.work / "eval"
    c.run(
        "tools/evaluate.py",
        *("--load", f"base={paths['base']}", "--text", f"ko={paths['text']}"),
        *("--max-docs", 8, "--out", out),
    )
    if c.validate:
        return c.accepted()
    ppl = json.loads((out / "evaluation.json").read_text())["checkpoints"]["base"]["ko"]["ppl"]
    return math.isfinite(ppl) and ppl > 1, ppl, {}


def lm_eval_adapter(c: Checks, paths: dict):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        why = "lm-eval is not installed in this Python (pip install lm-eval, or make gpu-wheels)"
        return None, None, {"why": why}
    bench = c.work / "benchmarks/kobest/copa"
    bench.mkdir(parents=True, exist_ok=True)
    record = {"premise": "비가 왔다", "alternative_1": "땅이 젖었다", "alternative_2": "해가 떴다"}
    rows = [{**record, "question": "결과", "label": i % 2} for i in range(4)]
    (bench / "test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    out = c.work / "lm_eval"
    c.run(
        "tools/evaluate.py",
        *("--load", f"base={paths['base']}", "--tasks", "local_kobest_copa"),
        *("--benchmark-dir", c.work / "benchmarks", "--out", out),
    )
    if c.validate:
        return c.accepted()
    tasks = json.loads((out / "evaluation.json").read_text())["checkpoints"]["base"]["tasks"]
    score = tasks.get("local_kobest_copa", {})
    return bool(score), score, {}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and the work files")
    p.add_argument("--layers", type=int, default=2, help="layers of the Llama-3.1-8B slice")
    p.add_argument("--seq-length", type=int, default=4096, help="training sequence length")
    p.add_argument("--steps", type=int, default=30, help="bf16 training steps")
    p.add_argument("--tiny", action="store_true", help="the tiny preset in fp32 (any machine)")
    p.add_argument(
        "--validate",
        action="store_true",
        help="train nothing: check that every command line and plan is accepted (no GPU needed)",
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available() and not (args.tiny or args.validate):
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}); nothing checked")
        return 0
    from motif_megatron.errors import quiet_library_warnings

    quiet_library_warnings()
    plan = Plan.tiny() if args.tiny else Plan.gpu(args.layers, args.seq_length, args.steps)
    out = Path(args.out)
    c = Checks(out, plan, args.validate)
    env = {**environment(plan), "validate": args.validate}
    print(json.dumps(env, default=str), flush=True)
    peak = None if args.validate else measured_bf16_peak()
    env["measured_bf16_matmul_tflops"] = peak / 1e12 if peak else None
    paths: dict = {}

    def prepared():
        paths.update(setup(c))
        return True, str(c.work), {}

    c.check("setup", prepared)
    if c.rows[-1]["ok"]:
        c.check("logits_vs_hf", lambda: logits_vs_hf(c, paths, "float32"))
        c.check("logits_vs_hf_bf16", lambda: logits_vs_hf(c, paths, "bfloat16"))
        c.check("masked_m0_vs_base", lambda: masked_at_zero(c, paths))
        c.check("pretrain_save_resume", lambda: pretrain_and_resume(c, paths, peak))
        c.check("kto_cached_reference", lambda: kto(c, paths))
        c.check("evaluate_perplexity", lambda: evaluate_ppl(c, paths))
        c.check("lm_eval_adapter", lambda: lm_eval_adapter(c, paths))
        c.check("packed_sft_vs_alone", lambda: packed_sft(c, paths))
    failed = [r["name"] for r in c.rows if r["ok"] is False]
    not_run = [r["name"] for r in c.rows if r["ok"] is None]
    report = {"environment": env, "checks": c.rows, "failed": failed, "not_run": not_run}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    passed = len(c.rows) - len(failed) - len(not_run)
    print(
        f"gpu-check: {passed}/{len(c.rows)} {'accepted' if args.validate else 'passed'}, "
        f"{len(not_run)} not run (see 'why') -> {out / 'gpu_check.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
