"""One prepared check for a GPU machine: numerics, trainer throughput and the lean decoder, in one JSON.

On the device machine, from the repository root, as one call with a 540 s limit (its python3 has
torch and transformers; nothing is installed or downloaded: the script puts this checkout's ``src/``
on ``sys.path`` when ``sspo`` is not installed; docs/gpu_check.md says more):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

On a CPU, in seconds (what tests/test_gpu_check.py runs): ``python benchmarks/gpu_check.py --tiny --device cpu``.

The model is Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 key/value heads, intermediate
4864, vocabulary 151936, tied embeddings, RoPE θ 1e6) built on the device from its config with
random weights (section ``model``, which also times a bf16 matrix product). Then four sections, each
recording its own failure in the JSON (the others still run):

- ``objectives``: every registered objective's loss and gradient w.r.t. the log-probs on the device,
  log-probs given in bfloat16 and in float32, against CPU float64 on the same (rounded) tensors;
- ``logprobs``: :func:`sspo.token_logprobs` and :func:`sspo.token_logprobs_from_hidden` (log-probs,
  entropies, gradients w.r.t. logits / hidden states / output embedding) against a naive float64
  ``log_softmax`` on the CPU;
- ``trainer``: optimizer updates at the paper preset's shapes (``configs/qwen2.5-0.5b-gsm8k-sspo.yaml``:
  P prompts x G samples split into K mini-batches of micro-batches, ``--prompt-len`` prompt tokens +
  ``max_new_tokens`` response tokens, random tokens) through the trainer's ``response_logprobs`` and
  ``policy_loss``, fused AdamW and gradient clipping: samples/s, tokens/s, peak memory, MFU
  (6·N·tokens / time / peak bf16 FLOP/s; each group's prompt runs once, the output embedding only at
  response positions; attention FLOPs not counted);
- ``decoder``: the lean decoder (``sampling.sample(backend="fast")``) against ``model.generate``, greedy,
  in float32 (token-exact, or a mismatch only at a near-tie of the logits) and bfloat16 (first
  mismatch reported), tokens/s of each, and preset-shaped sampling throughput.

The JSON is rewritten after every section; the process exits 1 if any check failed or errored.
Only torch, transformers (with tokenizers), safetensors, numpy and pyyaml are needed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PRESET = "qwen2.5-0.5b-gsm8k-sspo"
QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6)  # fmt: skip
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6)  # fmt: skip
# Dense bf16 peak of H100/H200 SXM (datasheet); on other devices pass --peak-tflops.
HOPPER_BF16_PEAK_TFLOPS = 989.0

# Tolerances: loss |err| <= atol + rtol·|ref|; gradients max|err| <= rtol·max|ref| (normwise).
LOSS_TOL = {"float32": (1e-6, 1e-5), "bfloat16": (1e-6, 1e-5)}  # math runs in fp32 for both
GRAD_RTOL = {"float32": 1e-5, "bfloat16": 1e-2}  # a bf16 leaf's gradient is rounded to bf16
LOGPROB_TOL = {  # (abs tol on log-probs and entropies, normwise rtol on gradients)
    ("logits", "float32"): (1e-4, 1e-4), ("logits", "bfloat16"): (1e-4, 1e-2),
    ("hidden", "float32"): (1e-4, 1e-4), ("hidden", "bfloat16"): (5e-2, 5e-2),  # bf16 logits matmul
}  # fmt: skip
TIE_GAP = 1e-3  # a float32 greedy mismatch is accepted only where the two tokens' logits are this close


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model and shapes (seconds on a CPU)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON of all figures")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense bf16 TFLOP/s for MFU (default 989 on H100/H200, else no MFU)")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="prompt tokens per row in the trainer and sampling sections (the preset sets "
                             "none; default 256, a chat-templated GSM8K prompt's order)")
    parser.add_argument("--updates", type=int, default=4, help="timed optimizer updates (K=4 is one preset step)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- helpers
class Budget:
    """The run's deadline: sections and timed loops ask how many seconds are left."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def import_sspo():
    """Import sspo, from this checkout's ``src/`` when it is not installed."""
    if importlib.util.find_spec("sspo") is None:
        sys.path.insert(0, str(ROOT / "src"))
    import sspo

    return sspo


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """``(seconds, result)`` of one call, synchronised on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def errors(value, reference) -> dict:
    """Max abs error and max abs error relative to max |reference| (normwise) of a tensor vs float64."""
    diff = (value.detach().double().cpu() - reference.detach()).abs()
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}


def leaf(t, device, dtype):
    """A fresh leaf tensor (its own storage and gradient) holding ``t`` on ``device`` in ``dtype``."""
    return t.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)


def run_section(name: str, fn, report: dict, out_path: Path) -> dict:
    """Run one section; its exception becomes ``{"status": "error", ...}``. Writes the JSON after it."""
    t0 = time.perf_counter()
    try:
        result = fn()
        result["status"] = result.get("status", "ok")
    except Exception as exc:  # each section records its own failure
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - t0
    report[name] = result
    free_memory()
    write_report(report, out_path)
    return result


def failed_checks(report: dict) -> list[str]:
    """Names of the checks that failed, errored sections and sections skipped for time included."""
    failed = []
    for name, section in report.items():
        if not isinstance(section, dict) or "status" not in section:
            continue
        if section["status"] != "ok":
            failed.append(f"{name}: {section['status']}")
        failed += [f"{name}/{check}" for check, ok in section.get("checks", {}).items() if not ok]
    return failed


def write_report(report: dict, out_path: Path) -> None:
    report["failed"] = failed_checks(report)
    report["ok"] = not report["failed"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out_path)


# ----------------------------------------------------------------------------- the model
def build_model(sizes: dict, device, seed: int):
    """A Qwen2 causal LM of ``sizes`` with random weights (float32, eval mode), built on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = dict(sizes)
    theta = sizes.pop("rope_theta")
    config = Qwen2Config(**sizes, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": theta}, use_sliding_window=False,
                         attention_dropout=0.0, pad_token_id=0, bos_token_id=None, eos_token_id=None)  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    expected = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    if not torch.allclose(model.model.rotary_emb.inv_freq.float(), expected, rtol=1e-5):
        raise RuntimeError(f"the model's RoPE frequencies are not those of theta={theta:g}")
    return model.eval()


def model_copy(model, dtype):
    return copy.deepcopy(model).to(dtype).eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


# ----------------------------------------------------------------------------- (a) objectives
def check_objectives(device, shape: tuple[int, int], seed: int) -> dict:
    from sspo.objectives import OBJECTIVES, policy_loss

    batch, length = shape
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    logp = old + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length
    mask = torch.arange(length)[None] < lengths[:, None]
    adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    results, checks = {}, {}
    for name in OBJECTIVES:
        results[name] = {}
        for dtype_name in ("float32", "bfloat16"):
            dtype = getattr(torch, dtype_name)
            lp_dev = leaf(logp, device, dtype)
            old_dev = old.to(device=device, dtype=dtype)
            out = policy_loss(name, lp_dev, old_dev, adv.to(device=device, dtype=torch.float32), mask.to(device))
            out.loss.backward()
            # the reference: the very same (rounded) tensors in float64 on the CPU
            lp_ref = lp_dev.detach().cpu().double().requires_grad_(True)
            ref = policy_loss(name, lp_ref, old_dev.cpu().double(), adv.float().double(), mask)
            ref.loss.backward()
            loss, loss_ref = float(out.loss.detach()), float(ref.loss.detach())
            loss_err = abs(loss - loss_ref)
            grad = errors(lp_dev.grad, lp_ref.grad)
            atol, rtol = LOSS_TOL[dtype_name]
            ok = (math.isfinite(loss) and loss_err <= atol + rtol * abs(loss_ref)
                  and grad["max_rel"] <= GRAD_RTOL[dtype_name])  # fmt: skip
            results[name][dtype_name] = {
                "loss": loss, "loss_ref": loss_ref, "loss_abs_err": loss_err,
                "loss_rel_err": loss_err / abs(loss_ref) if loss_ref else loss_err,
                "grad_max_abs_err": grad["max_abs"], "grad_max_rel_err": grad["max_rel"],
                "tol": {"loss_atol": atol, "loss_rtol": rtol, "grad_rtol": GRAD_RTOL[dtype_name]}, "pass": ok,
            }  # fmt: skip
            checks[f"{name}/{dtype_name}"] = ok
    return {"shape": {"B": batch, "T": length}, "results": results, "checks": checks}


# ----------------------------------------------------------------------------- (a) log-probs
def _naive(z, labels, temperature):
    logp_all = torch.log_softmax(z / temperature, dim=-1)
    logp = logp_all.gather(-1, labels[:, None]).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def check_logprobs(device, rows: int, vocab: int, hidden_size: int, seed: int, temperature: float = 0.8) -> dict:
    from sspo.logprobs import token_logprobs, token_logprobs_from_hidden

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    g_logp = torch.randn(rows, generator=gen, dtype=torch.float64)
    g_ent = 0.1 * torch.randn(rows, generator=gen, dtype=torch.float64)
    logits = 2.0 * torch.randn(rows, vocab, generator=gen)
    hidden = torch.randn(rows, hidden_size, generator=gen)
    weight = 0.05 * torch.randn(vocab, hidden_size, generator=gen)
    results, checks = {}, {}

    def upstream(logp, ent):
        return (logp.double() * g_logp.to(logp.device)).sum() + (ent.double() * g_ent.to(ent.device)).sum()

    for source in ("logits", "hidden"):
        for dtype_name in ("float32", "bfloat16"):
            dtype = getattr(torch, dtype_name)
            if source == "logits":
                leaves = {"logits": leaf(logits, device, dtype)}
                logp, ent = token_logprobs(leaves["logits"], labels.to(device), temperature=temperature)
            else:
                leaves = {"hidden": leaf(hidden, device, dtype), "weight": leaf(weight, device, dtype)}
                logp, ent = token_logprobs_from_hidden(leaves["hidden"], leaves["weight"], labels.to(device),
                                                       temperature=temperature)  # fmt: skip
            upstream(logp, ent).backward()
            refs = {k: v.detach().cpu().double().requires_grad_(True) for k, v in leaves.items()}
            z = refs["logits"] if source == "logits" else refs["hidden"] @ refs["weight"].T
            logp_ref, ent_ref = _naive(z, labels, temperature)
            upstream(logp_ref, ent_ref).backward()
            atol, rtol = LOGPROB_TOL[(source, dtype_name)]
            entry = {"logp": errors(logp, logp_ref), "entropy": errors(ent, ent_ref),
                     **{f"grad_{k}": errors(leaves[k].grad, refs[k].grad) for k in leaves},
                     "tol": {"value_atol": atol, "grad_rtol": rtol}}  # fmt: skip
            entry["pass"] = (entry["logp"]["max_abs"] <= atol and entry["entropy"]["max_abs"] <= atol
                             and all(entry[f"grad_{k}"]["max_rel"] <= rtol for k in leaves))  # fmt: skip
            results[f"{source}/{dtype_name}"] = entry
            checks[f"{source}/{dtype_name}"] = entry["pass"]
            del leaves, refs, z, logp, ent, logp_ref, ent_ref
            free_memory()
    return {"shape": {"rows": rows, "vocab": vocab, "hidden": hidden_size}, "temperature": temperature,
            "results": results, "checks": checks}  # fmt: skip


# ----------------------------------------------------------------------------- (b) trainer updates
def trainer_shapes(tiny: bool, prompt_len: int | None) -> dict:
    from sspo.trainer.config import load_config

    config = load_config(PRESET)
    r, u = config.rollout, config.update
    preset = {"prompts_per_step": r.prompts_per_step, "samples_per_prompt": r.samples_per_prompt,
              "max_new_tokens": r.max_new_tokens, "mini_batches": u.mini_batches,
              "micro_batch_size": u.micro_batch_size, "prompt_len": 256, "temperature": r.temperature}  # fmt: skip
    if tiny:
        preset.update(prompts_per_step=2, samples_per_prompt=4, max_new_tokens=16, mini_batches=2,
                      micro_batch_size=2, prompt_len=16)  # fmt: skip
    if prompt_len:
        preset["prompt_len"] = prompt_len
    objective = {"name": config.objective.name, "params": dict(config.objective.params),
                 "loss_agg_mode": config.objective.loss_agg_mode}  # fmt: skip
    optim = {"lr": config.optim.lr, "betas": tuple(config.optim.betas), "weight_decay": config.optim.weight_decay,
             "grad_clip": config.optim.grad_clip}  # fmt: skip
    return {"preset": PRESET, "shape": preset, "objective": objective, "optim": optim, "dtype": config.dtype}


def random_batch(rows: int, group: int, prompt_len: int, response_len: int, vocab: int, device, seed: int):
    """Random tokens shaped like a rollout batch: ``rows/group`` prompts, each repeated ``group`` times,
    followed by full-length responses (no padding)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, vocab, (rows // group, prompt_len), generator=gen).repeat_interleave(group, 0)
    responses = torch.randint(1, vocab, (rows, response_len), generator=gen)
    input_ids = torch.cat([prompts, responses], dim=1).to(device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "response_ids": responses.to(device), "response_mask": torch.ones(rows, response_len, dtype=torch.bool,
                                                                              device=device),
            "groups": (torch.arange(rows) // group).to(device),
            "rewards": (torch.rand(rows, generator=gen) < 0.5).float().to(device)}  # fmt: skip


def check_trainer(model_fp32, device, tiny: bool, args, budget: Budget) -> dict:
    from sspo.advantages import group_advantages
    from sspo.objectives import policy_loss
    from sspo.trainer.policy import lean_forward_ok, response_logprobs, response_logprobs_no_grad

    setup = trainer_shapes(tiny, args.prompt_len)
    s, objective, optim = setup["shape"], setup["objective"], setup["optim"]
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = model_copy(model_fp32, dtype)  # the trainer keeps the policy in eval mode (no dropout)
    group, micro = s["samples_per_prompt"], s["micro_batch_size"]
    rows = s["prompts_per_step"] * group // s["mini_batches"]  # one mini-batch: one optimizer update
    batch = random_batch(rows, group, s["prompt_len"], s["max_new_tokens"], model.config.vocab_size, device, args.seed)
    advantages, _ = group_advantages(batch["rewards"], group, method="grpo")
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim["lr"], betas=optim["betas"],
                                  weight_decay=optim["weight_decay"], fused=torch.device(device).type in ("cpu", "cuda"))
    mask = batch["response_mask"]
    norms = {"global_num_tokens": mask.sum(), "global_num_seqs": mask.any(-1).sum()}

    recompute_s, old = timed(lambda: response_logprobs_no_grad(
        model, batch["input_ids"], batch["attention_mask"], batch["response_ids"], temperature=s["temperature"],
        groups=batch["groups"]), device)  # fmt: skip

    def update():
        """The trainer's update (loop.Trainer._update): micro-batches, globally normalised loss, clip, step."""
        losses = []
        for part in torch.arange(rows, device=device).split(micro):
            logp, entropy = response_logprobs(model, batch["input_ids"][part], batch["attention_mask"][part],
                                              batch["response_ids"][part], temperature=s["temperature"],
                                              groups=batch["groups"][part])  # fmt: skip
            out = policy_loss(objective["name"], logp, old[part], advantages[part], mask[part],
                              loss_agg_mode=objective["loss_agg_mode"], entropy=entropy, **norms,
                              **objective["params"])  # fmt: skip
            out.loss.backward()
            losses.append(out.loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(torch.stack(losses).sum()), float(grad_norm)

    warm_s, (warm_loss, warm_norm) = timed(update, device)  # warm-up (allocator, kernels, optimizer state)
    reset_peak(device)
    times, losses, norms_seen = [], [], []
    while len(times) < args.updates and (not times or budget.left() > 3 * max(times)):
        seconds, (loss, grad_norm) = timed(update, device)
        times.append(seconds)
        losses.append(loss)
        norms_seen.append(grad_norm)
    memory = peak_gib(device)
    per_update = sorted(times)[len(times) // 2]
    prompts_per_micro = -(-micro // group)  # distinct prompts in one micro-batch (groups stay whole)
    micro_batches = -(-rows // micro)
    # tokens the model runs per update: each distinct prompt once, every row's response; the output
    # embedding (tied: counted once in N) runs only at response positions
    prompt_tokens = micro_batches * prompts_per_micro * s["prompt_len"]
    response_tokens = rows * s["max_new_tokens"]
    model_tokens = prompt_tokens + response_tokens
    params = n_params(model)
    head = model.get_output_embeddings().weight.numel()
    peak = peak_flops(args, device)
    flops = 6.0 * (params - head) * model_tokens + 6.0 * head * response_tokens
    finite = all(math.isfinite(x) for x in [warm_loss, warm_norm, *losses, *norms_seen])
    return {
        **setup, "train_dtype": str(dtype).removeprefix("torch."), "rows_per_update": rows,
        "forward_path": "lean" if lean_forward_ok(model) else "hf-decoder",
        "n_params": params, "timed_updates": len(times), "update_s": times, "update_s_median": per_update,
        "warmup_update_s": warm_s, "old_logprobs_recompute_s": recompute_s,
        "est_step_update_s": s["mini_batches"] * (per_update + recompute_s),
        "samples_per_s": rows / per_update,
        "tokens_per_s": model_tokens / per_update,
        "response_tokens_per_s": response_tokens / per_update,
        "model_tokens_per_update": model_tokens,
        "peak_memory_gib": memory,
        "flops_per_update": flops, "tflops_per_s": flops / per_update / 1e12,
        "peak_tflops": peak, "mfu": flops / per_update / (peak * 1e12) if peak else None,
        "loss": losses, "grad_norm": norms_seen,
        "checks": {"finite_loss_and_grad": finite, "positive_throughput": rows / per_update > 0,
                   "all_updates_timed": len(times) == args.updates},
    }  # fmt: skip


def peak_flops(args, device):
    if args.peak_tflops:
        return args.peak_tflops
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H200" in name or "H100" in name:
            return HOPPER_BF16_PEAK_TFLOPS
    return None


def matmul_tflops(device) -> float | None:
    """Achieved bf16 TFLOP/s of an 8192³ matrix product (the device's practical ceiling)."""
    if torch.device(device).type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(10)], device)
    return 2 * n**3 * 10 / seconds / 1e12


# ----------------------------------------------------------------------------- (c) the lean decoder
def _generate(model, prompts, new_tokens):
    from transformers import GenerationConfig

    from sspo.trainer.sampling import left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, 0, device)
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0, eos_token_id=None, use_cache=True)  # fmt: skip
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1] :]


def _fast(model, prompts, new_tokens):
    from sspo.trainer.sampling import sample

    out = sample(model, prompts, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0, greedy=True,
                 return_logprobs=False, backend="fast")  # fmt: skip
    return out.response_ids


def _tie_gaps(model, prompts, fast, hf, rows, first):
    """For mismatched rows: ``logit[hf token] − logit[fast token]`` at the first mismatch, from one forward
    of the common prefix (about 0 at a near-tie)."""
    device = next(model.parameters()).device
    gaps = []
    for row in rows[:8]:
        j = int(first[row])
        a, b = int(hf[row, j]), int(fast[row, j])
        prefix = torch.tensor(list(prompts[row]) + hf[row, :j].tolist(), device=device)[None]
        with torch.inference_mode():
            logits = model(input_ids=prefix).logits[0, -1].float()
        gaps.append({"row": int(row), "position": j, "hf_token": a, "fast_token": b,
                     "logit_gap": float(logits[a] - logits[b])})  # fmt: skip
    return gaps


def compare_greedy(model, prompts, new_tokens, device) -> dict:
    _fast(model, prompts, 2)  # warm-up both on the same rows
    _generate(model, prompts, 2)
    t_fast, fast = timed(lambda: _fast(model, prompts, new_tokens), device)
    t_hf, hf = timed(lambda: _generate(model, prompts, new_tokens), device)
    fast, hf = fast.cpu(), hf.cpu()
    tokens = len(prompts) * new_tokens
    result = {"rows": len(prompts), "new_tokens": new_tokens, "fast_s": t_fast, "generate_s": t_hf,
              "fast_tokens_per_s": tokens / t_fast, "generate_tokens_per_s": tokens / t_hf,
              "speedup": t_hf / t_fast}  # fmt: skip
    if fast.shape != hf.shape:
        return {**result, "exact_match": False, "error": f"shapes differ: fast {tuple(fast.shape)}, hf {tuple(hf.shape)}"}
    differ = fast != hf
    bad_rows = differ.any(-1).nonzero()[:, 0].tolist()
    first = torch.where(differ.any(-1), differ.int().argmax(-1), torch.full((len(prompts),), new_tokens))
    result.update({
        "exact_match": not bad_rows, "rows_equal": len(prompts) - len(bad_rows),
        "first_mismatch": None if not bad_rows else int(first.min()),
        "first_mismatch_median": None if not bad_rows else float(first[bad_rows].float().median()),
        "tokens_before_first_mismatch_frac": float(first.float().sum() / tokens),
        "mismatches": _tie_gaps(model, prompts, fast, hf, bad_rows, first) if bad_rows else [],
    })  # fmt: skip
    return result


def check_decoder(model_fp32, device, tiny: bool, args, budget: Budget) -> dict:
    from sspo.trainer.sampling import sample

    gen = torch.Generator().manual_seed(args.seed + 1)
    vocab = model_fp32.config.vocab_size
    n_prompts, group, max_prompt, new_tokens = (2, 2, 8, 8) if tiny else (16, 4, 128, 128)

    def random_prompts(n, low, high):
        lengths = torch.randint(low, high + 1, (n,), generator=gen).tolist()
        return [torch.randint(1, vocab, (k,), generator=gen).tolist() for k in lengths]

    distinct = random_prompts(n_prompts * group, max_prompt // 2, max_prompt)  # eval-like: left padding
    grouped = [p for p in random_prompts(n_prompts, max_prompt // 2, max_prompt) for _ in range(group)]  # GRPO-like
    result, checks = {"greedy": {}}, {}
    for dtype_name in ("float32", "bfloat16"):
        model = model_fp32 if dtype_name == "float32" else model_copy(model_fp32, torch.bfloat16)
        for workload, prompts in (("distinct", distinct), ("grouped", grouped)):
            if budget.left() < 30:
                result["greedy"][f"{dtype_name}/{workload}"] = {"status": "skipped: time limit"}
                checks[f"greedy/{dtype_name}/{workload}"] = dtype_name != "float32"
                continue
            r = compare_greedy(model, prompts, new_tokens, device)
            result["greedy"][f"{dtype_name}/{workload}"] = r
            if dtype_name == "float32":  # exact, or mismatches only at near-ties of the logits
                explained = all(abs(m["logit_gap"]) <= TIE_GAP for m in r.get("mismatches", []))
                checks[f"greedy/{dtype_name}/{workload}"] = bool(r["exact_match"] or (explained and "error" not in r))
        if dtype_name == "bfloat16":
            bf16_model = model
    result["tie_gap_tol"] = TIE_GAP

    # preset-shaped sampling (trainer rollouts): P prompts x G samples, temperature, no EOS, lean decoder
    s = trainer_shapes(tiny, args.prompt_len)["shape"]
    if budget.left() > 60 or tiny:
        prompts = [p for p in random_prompts(s["prompts_per_step"], s["prompt_len"], s["prompt_len"])
                   for _ in range(s["samples_per_prompt"])]  # fmt: skip
        reset_peak(device)
        seconds, rollout = timed(lambda: sample(
            bf16_model, prompts, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], eos_token_id=None,
            pad_token_id=0, generator=torch.Generator(device=device).manual_seed(args.seed), backend="fast"), device)
        tokens = int(rollout.response_lengths.sum())
        result["sampling_preset"] = {"rows": len(prompts), "prompt_len": s["prompt_len"],
                                     "max_new_tokens": s["max_new_tokens"], "dtype": "bfloat16", "seconds": seconds,
                                     "tokens_per_s": tokens / seconds, "samples_per_s": len(prompts) / seconds,
                                     "peak_memory_gib": peak_gib(device)}  # fmt: skip
    else:
        result["sampling_preset"] = {"status": "skipped: time limit"}
    result["checks"] = checks
    return result


# ----------------------------------------------------------------------------- main
def summary_lines(report: dict) -> list[str]:
    lines = [f"gpu_check on {report['meta']['device_name']} ({'tiny' if report['meta']['tiny'] else 'Qwen2.5-0.5B shape'})"]
    model = report.get("model", {})
    if model.get("status") == "ok":
        tflops = model["bf16_matmul_tflops"]
        lines.append(f"model: {model['n_params'] / 1e6:.1f}M parameters, attention {model['attn_implementation']}"
                     + (f"; bf16 8192^3 matmul {tflops:.0f} TFLOP/s" if tflops else ""))  # fmt: skip
    obj = report.get("objectives", {})
    if obj.get("status") == "ok":
        for dtype_name in ("float32", "bfloat16"):
            worst = max(obj["results"].values(), key=lambda r: r[dtype_name]["grad_max_rel_err"])[dtype_name]
            loss = max(r[dtype_name]["loss_rel_err"] for r in obj["results"].values())
            lines.append(f"objectives {dtype_name:>8}: max loss rel err {loss:.2e}, max grad rel err "
                         f"{worst['grad_max_rel_err']:.2e} ({len(obj['results'])} objectives)")  # fmt: skip
    lp = report.get("logprobs", {})
    if lp.get("status") == "ok":
        for key, r in lp["results"].items():
            grads = ", ".join(f"{k[5:]} {v['max_rel']:.1e}" for k, v in r.items() if k.startswith("grad_"))
            lines.append(f"logprobs {key:>16}: logp err {r['logp']['max_abs']:.1e}, entropy err "
                         f"{r['entropy']['max_abs']:.1e}, grad rel {grads}")  # fmt: skip
    tr = report.get("trainer", {})
    if tr.get("status") == "ok":
        mfu = f"{tr['mfu']:.1%}" if tr["mfu"] is not None else "n/a"
        mem = f"{tr['peak_memory_gib']:.1f} GiB" if tr["peak_memory_gib"] is not None else "n/a"
        lines.append(f"trainer ({tr['rows_per_update']} rows x {tr['shape']['prompt_len']}+{tr['shape']['max_new_tokens']} "
                     f"tokens, {tr['train_dtype']}, {tr['forward_path']}): {tr['update_s_median']:.3f} s/update, "
                     f"{tr['samples_per_s']:.1f} samples/s, {tr['tokens_per_s']:.0f} tokens/s, peak {mem}, MFU {mfu}")  # fmt: skip
    dec = report.get("decoder", {})
    if dec.get("status") == "ok":
        for key, r in dec["greedy"].items():
            if "exact_match" not in r:
                lines.append(f"decoder {key:>18}: {r.get('status')}")
                continue
            match = "exact" if r["exact_match"] else f"first mismatch at {r['first_mismatch']} ({r['rows_equal']}/{r['rows']} rows equal)"
            lines.append(f"decoder {key:>18}: {match}; fast {r['fast_tokens_per_s']:.0f} tok/s, generate "
                         f"{r['generate_tokens_per_s']:.0f} tok/s (x{r['speedup']:.1f})")  # fmt: skip
        sp = dec.get("sampling_preset", {})
        if "tokens_per_s" in sp:
            lines.append(f"sampling {sp['rows']} rows x {sp['max_new_tokens']} new tokens: {sp['tokens_per_s']:.0f} tokens/s")
    for name in ("model", "objectives", "logprobs", "trainer", "decoder"):
        if report.get(name, {}).get("status") not in (None, "ok"):
            lines.append(f"{name}: {report[name]['status']} {report[name].get('error', '')}")
    lines.append("ALL CHECKS PASSED" if report["ok"] else f"FAILED: {', '.join(report['failed'])}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.time_limit)
    import transformers

    sspo = import_sspo()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = Path(args.out)
    is_cuda = torch.device(device).type == "cuda"
    sizes = TINY_MODEL if args.tiny else QWEN25_05B
    report: dict = {"meta": {
        "device": device, "device_name": torch.cuda.get_device_name(device) if is_cuda else platform.processor() or "cpu",
        "tiny": args.tiny, "model": sizes, "torch": torch.__version__, "transformers": transformers.__version__,
        "sspo": sspo.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "args": vars(args),
    }}  # fmt: skip
    built = {}

    def setup() -> dict:
        built["model"] = model = build_model(sizes, device, args.seed)
        return {"n_params": n_params(model), "attn_implementation": getattr(model.config, "_attn_implementation", None),
                "bf16_matmul_tflops": matmul_tflops(device)}  # fmt: skip

    run_section("model", setup, report, out_path)
    run_section("objectives", lambda: check_objectives(device, (8, 16) if args.tiny else (128, 512), args.seed),
                report, out_path)  # fmt: skip
    run_section("logprobs", lambda: check_logprobs(device, 64 if args.tiny else 512, sizes["vocab_size"],
                                                   sizes["hidden_size"], args.seed), report, out_path)  # fmt: skip
    run_section("trainer", lambda: check_trainer(built["model"], device, args.tiny, args, budget), report, out_path)
    run_section("decoder", lambda: check_decoder(built["model"], device, args.tiny, args, budget), report, out_path)
    report["meta"]["elapsed_s"] = budget.elapsed()
    write_report(report, out_path)
    print("\n".join(summary_lines(report)))
    print(f"wrote {out_path} in {budget.elapsed():.1f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
