"""Edge latency in llama.cpp, the paper's protocol (Tables 5 and 6), on this machine's CPU.

For every exported model: llama.cpp's load time, prompt processing (tokens/s), sampling and generation
(tokens/s) and the total time, read from llama.cpp's own counters (llama_perf_context / llama_perf_sampler).
- LM (Table 5): "Building a website can be done in 10 simple steps:\\nStep 1:", 400 tokens out, q4_k_s and q8_0.
- VLM (Table 6): a 336x336 image + "What is in the picture?" in MobileVLM's vicuna_v1 conversation, 256
  tokens out; the LLM 4-bit, the mmproj (vision tower + projector) f16; LDP (144 visual tokens) against
  mlp2x_gelu (576). The image encode (mtmd: preprocessing, ViT, projector) is its own column: the prefill's
  wall time minus llama.cpp's prompt-decode time (which covers the text and the image embeddings).
Generation goes through llama.cpp's sampler chain (greedy, EOS masked by a logit bias) so exactly N tokens
come out. Weights are random (jax.random init, checkpoint, GGUF export): speed does not depend on them.

  python -m bench.edge_latency [--sizes tiny,1.4b,2.7b] [--types q4_k_s,q8_0] [--projectors ldp,mlp2x_gelu]
      [--vlm-sizes tiny,1.4b,2.7b] [--vlm-types q4_k_s] [--lm-tokens 400] [--vlm-tokens 256] [--workdir DIR]

Exports are kept in --workdir and reused on a re-run; checkpoints are deleted once their exports exist.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from bench.report import Headline

LM_PROMPT = "Building a website can be done in 10 simple steps:\nStep 1:"
VLM_QUESTION = "What is in the picture?"
SIZES = ("tiny", "1.4b", "2.7b")
PROJECTORS = ("ldp", "mlp2x_gelu")
TOKENIZER_PIECES = 512  # = the tiny LLM's vocabulary; larger shapes pad to 32000 with [PADi] entries

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of the protocol: an LM run (projector None) or a VLM run."""

    size: str
    file_type: str
    projector: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """llama.cpp's counters for one run, plus our wall clock for the image encode and the total."""

    run: Run
    gguf_mb: float          # LLM (+ mmproj) file size
    load_ms: float          # llama.cpp's model load (t_load_ms)
    prompt_tokens: int      # tokens decoded as the prompt (n_p_eval), visual tokens included
    visual_tokens: int
    prompt_ms: float        # t_p_eval_ms
    image_ms: float | None  # mtmd encode of the image (VLM only)
    gen_tokens: int         # n_eval
    gen_ms: float           # t_eval_ms
    sample_ms: float        # t_sample_ms of the sampler chain
    total_s: float          # wall: construction (LLM + mmproj load) + prefill + generation
    load_avg: float         # 1-minute load average after the run (the machine is shared)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / (self.prompt_ms / 1e3)

    @property
    def gen_tps(self) -> float:
        return self.gen_tokens / (self.gen_ms / 1e3)

    @property
    def sample_tps(self) -> float:
        return self.gen_tokens / max(self.sample_ms / 1e3, 1e-9)


# -- models ------------------------------------------------------------------------------------------
def tiny_vision():
    """A tiny tower on the real 336/14 grid (llama.cpp's LDP graph hard-codes 24 x 24 patches)."""
    from mvlm_jax.models.config import VisionConfig

    return VisionConfig(image_size=336, patch_size=14, width=64, num_layers=3, num_heads=4, mlp_dim=128,
                        class_token=False)


def model_config(size: str, projector: str | None):
    """LlamaConfig for an LM, VLMConfig (ViT-L/14-336 tower, or the tiny tower for `tiny`) for a VLM."""
    from mvlm_jax.models.config import LLAMA_PRESETS, PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig

    llm = LLAMA_PRESETS[size]
    if projector is None:
        return llm
    vision = tiny_vision() if size == "tiny" else VISION_PRESETS["l14_336"]
    return VLMConfig(vision=vision, projector=PROJECTOR_PRESETS[projector], llm=llm)


def synthetic_text(lines: int = 4000, seed: int = 0) -> list[str]:
    """English-like lines (the prompts' words among common ones) to train a small SentencePiece model."""
    words = ("building a website can be done in simple steps step what is the picture image of and to for "
             "with on at by from this that it you your we our they people make made first next then last "
             "choose domain name host page design content write test publish user assistant chat between "
             "curious artificial intelligence gives helpful detailed polite answers questions question "
             "answer model small fast phone device mobile vision language token tokens time speed run "
             "cat dog tree house car road city sky blue green red white black water light table chair").split()
    rng = random.Random(seed)
    out = []
    for index in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        out.append(f"Step {index % 10 + 1}: {sentence.capitalize()}{rng.choice('.?!:')}")
    return out


def ensure_tokenizer(workdir: Path) -> Path:
    from data_pipelines.tokenizer import train_tokenizer

    path = workdir / "tokenizer.model"
    if not path.is_file():
        train_tokenizer(synthetic_text(), TOKENIZER_PIECES, path)
    return path


def export_dir(workdir: Path, size: str, variant: str, file_type: str) -> tuple[Path, str]:
    return workdir / "gguf" / f"{size}-{variant}" / file_type, f"mvlm-{size}-{variant}"


def ensure_exports(workdir: Path, size: str, variant: str, file_types: Sequence[str], log: Log) -> dict[str, list[Path]]:
    """GGUF files per type for one model (variant "lm" or a projector); builds the random-weight checkpoint
    only when some file is missing, and deletes it afterwards (1.4B/2.7B checkpoints are 5.5/11 GB)."""
    import jax

    from mvlm_jax.checkpoint import CONFIG_FILE, save_model
    from mvlm_jax.export.gguf_file import export_gguf, output_paths
    from mvlm_jax.models import init_params

    projector = None if variant == "lm" else variant
    files: dict[str, list[Path]] = {}
    ckpt = workdir / "ckpt" / f"{size}-{variant}"
    for file_type in file_types:
        out, name = export_dir(workdir, size, variant, file_type)
        paths = output_paths(out, name, file_type, vision=projector is not None)
        if not all(p.is_file() for p in paths):
            if not (ckpt / CONFIG_FILE).is_file():  # save_model is atomic: a config means a whole checkpoint
                started = time.perf_counter()
                config = model_config(size, projector)
                # Host (numpy) leaves: orbax's jax.Array handler refuses arrays over its 1e9-byte
                # concurrency budget (the 1.4B MLP stacks are 1.1 GB); on the CPU np.asarray is a view.
                params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
                save_model(ckpt, params, config, force=True, tokenizer=ensure_tokenizer(workdir))
                del params
                gc.collect()
                log(f"  checkpoint {ckpt.name}: {time.perf_counter() - started:.0f} s")
            started = time.perf_counter()
            # Files are written atomically, so any that exists is complete; force only rewrites ours.
            export_gguf(ckpt, out, file_type, name=name, force=any(p.is_file() for p in paths))
            log(f"  export {name} {file_type}: {time.perf_counter() - started:.0f} s")
        files[file_type] = paths
    if ckpt.exists():
        shutil.rmtree(ckpt)
    return files


# -- measuring ---------------------------------------------------------------------------------------
def probe_image(seed: int = 0) -> np.ndarray:
    """A 336 x 336 RGB image (mtmd copies an image of exactly this size without resizing)."""
    return np.random.default_rng(seed).integers(0, 256, (336, 336, 3), dtype=np.uint8)


def _greedy_chain(llama_cpp, n_vocab: int, eos_id: int):
    """llama.cpp sampler chain: EOS biased to -inf (exactly N tokens come out), then greedy."""
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = False
    chain = llama_cpp.llama_sampler_chain_init(params)
    bias = (llama_cpp.llama_logit_bias * 1)()
    bias[0].token, bias[0].bias = eos_id, float("-inf")
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, 1, bias))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    return chain


def measure(run: Run, llm_path: Path, mmproj_path: Path | None, new_tokens: int, threads: int,
            image: np.ndarray | None = None) -> Result:
    """One protocol run in a fresh llama.cpp instance; checks llama.cpp's counts against the prompt."""
    import llama_cpp

    from data_pipelines.templates import VICUNA_V1_SYSTEM
    from mvlm_jax.edge.llamacpp import LlamaCppModel

    vlm = mmproj_path is not None
    started = time.perf_counter()
    # n_ctx 2048: the MLP prompt (~700 tokens) + 256 out, or the LM prompt + 400 out, fit with room.
    model = LlamaCppModel(llm_path, mmproj_path, n_ctx=2048, n_threads=threads,
                          n_batch=512, logits_all=False)
    load_wall = time.perf_counter() - started
    try:
        llm, ctx = model.llm, model.llm.ctx
        # Warm-up as llama.cpp's CLI does (one decode, then cache and counters cleared): pages weights in.
        llm.eval([llm.token_bos()])
        llama_cpp.llama_synchronize(ctx)  # books the warm-up decode before the counters are reset
        # llama.cpp's own load time: it extends t_load to the end of the first decode (mmap'd weights are
        # read then).
        load_ms = llama_cpp.llama_perf_context(ctx).t_load_ms
        llm.reset()
        if vlm:
            segments: list = [model.tokenize(f"{VICUNA_V1_SYSTEM} USER: "), image if image is not None else probe_image(),
                              model.tokenize(f"\n{VLM_QUESTION} ASSISTANT:", add_bos=False)]
        else:
            segments = [model.tokenize(LM_PROMPT)]
        text_tokens = sum(len(s) for s in segments if not isinstance(s, np.ndarray))
        chain = _greedy_chain(llama_cpp, llm.n_vocab(), llm.token_eos())
        try:
            llama_cpp.llama_perf_context_reset(ctx)
            started_run = time.perf_counter()
            model.prefill(segments)
            prefill_s = time.perf_counter() - started_run
            for _ in range(new_tokens):
                token = llama_cpp.llama_sampler_sample(chain, ctx, -1)  # also accepts the token into the chain
                llm.eval([token])
            llama_cpp.llama_synchronize(ctx)  # books the last decode
            run_s = time.perf_counter() - started_run
            perf = llama_cpp.llama_perf_context(ctx)
            sample_ms = llama_cpp.llama_perf_sampler(chain).t_sample_ms
        finally:
            llama_cpp.llama_sampler_free(chain)
    finally:
        model.close()
    prompt_ms = perf.t_p_eval_ms
    visual = perf.n_p_eval - text_tokens
    if perf.n_eval != new_tokens or (visual != 0 and not vlm):
        raise RuntimeError(f"{run}: llama.cpp counted {perf.n_p_eval} prompt / {perf.n_eval} generated tokens, "
                           f"expected {text_tokens} / {new_tokens}")
    size_mb = sum(p.stat().st_size for p in [llm_path] + ([mmproj_path] if vlm else [])) / 2**20
    return Result(run=run, gguf_mb=size_mb, load_ms=load_ms, prompt_tokens=perf.n_p_eval, visual_tokens=visual,
                  prompt_ms=prompt_ms, image_ms=(prefill_s * 1e3 - prompt_ms) if vlm else None,
                  gen_tokens=perf.n_eval, gen_ms=perf.t_eval_ms, sample_ms=sample_ms,
                  total_s=load_wall + run_s, load_avg=os.getloadavg()[0])


def plan_runs(sizes: Sequence[str], types: Sequence[str], projectors: Sequence[str], vlm_sizes: Sequence[str],
              vlm_types: Sequence[str]) -> list[Run]:
    runs = [Run(size, t) for size in sizes for t in types]
    runs += [Run(size, t, p) for size in sizes if size in vlm_sizes for t in vlm_types for p in projectors]
    return runs


def run_protocol(runs: Sequence[Run], workdir: Path, lm_tokens: int, vlm_tokens: int, threads: int,
                 log: Log = print, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Export (or reuse) and measure every run, one model size at a time (so at most one big checkpoint
    exists). An LM row of a size that also has VLM rows uses the LLM file of its first projector's export."""
    results = []
    for size in dict.fromkeys(r.size for r in runs):
        size_runs = [r for r in runs if r.size == size]
        variants = list(dict.fromkeys(r.projector for r in size_runs if r.projector)) or ["lm"]
        lm_types = [r.file_type for r in size_runs if r.projector is None]
        files: dict[str, dict[str, list[Path]]] = {}
        for index, variant in enumerate(variants):
            wanted = [r.file_type for r in size_runs if r.projector == variant] + (lm_types if index == 0 else [])
            wanted = list(dict.fromkeys(wanted))
            log(f"{size} {variant}: GGUF {', '.join(wanted)}")
            files[variant] = ensure_exports(workdir, size, variant, wanted, log)
        for run in size_runs:
            variant = run.projector or variants[0]
            llm_path, *mmproj = files[variant][run.file_type]
            result = measure(run, llm_path, mmproj[0] if run.projector else None,
                             vlm_tokens if run.projector else lm_tokens, threads)
            log(f"  {format_row(result)}")
            results.append(result)
            if on_result:
                on_result(result)
    return results


# -- report ------------------------------------------------------------------------------------------
HEADER = ["model", "type", "projector", "GGUF MB", "load ms", "prompt tokens (visual)", "prompt tok/s",
          "image encode ms", "gen tokens", "sample tok/s", "gen tok/s", "total s", "load avg"]


def format_row(r: Result) -> str:
    kind = "MobileVLM" if r.run.projector else "MobileLLaMA"
    cells = [f"{kind} {r.run.size}", r.run.file_type, r.run.projector or "-", f"{r.gguf_mb:,.1f}",
             f"{r.load_ms:,.0f}", f"{r.prompt_tokens} ({r.visual_tokens})", f"{r.prompt_tps:,.1f}",
             f"{r.image_ms:,.0f}" if r.image_ms is not None else "-", str(r.gen_tokens), f"{r.sample_tps:,.0f}",
             f"{r.gen_tps:,.2f}", f"{r.total_s:,.1f}", f"{r.load_avg:.1f}"]
    return "| " + " | ".join(cells) + " |"


def table(results: Sequence[Result]) -> list[str]:
    return ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)] + [format_row(r) for r in results]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,1.4b,2.7b")
    parser.add_argument("--types", default="q4_k_s,q8_0", help="LLM types of the LM runs")
    parser.add_argument("--projectors", default="ldp,mlp2x_gelu")
    parser.add_argument("--vlm-sizes", default="tiny,1.4b,2.7b", help="sizes that also get VLM runs")
    parser.add_argument("--vlm-types", default="q4_k_s", help="LLM types of the VLM runs (the paper: 4-bit)")
    parser.add_argument("--lm-tokens", type=int, default=400)
    parser.add_argument("--vlm-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default="workdir-edge-latency", help="exports (kept) and checkpoints (deleted)")
    parser.add_argument("--report", default="docs/PERFORMANCE.md", help="'' to skip the report")
    args = parser.parse_args(argv)
    split = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    sizes, projectors = split(args.sizes), split(args.projectors)
    for size in sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; expected some of {SIZES}")
    for projector in projectors:
        if projector not in PROJECTORS:
            parser.error(f"unknown projector {projector!r}; expected some of {PROJECTORS}")
    runs = plan_runs(sizes, split(args.types), projectors, split(args.vlm_sizes), split(args.vlm_types))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    started = time.perf_counter()
    results = run_protocol(runs, workdir, args.lm_tokens, args.vlm_tokens, args.threads, log=log)
    elapsed = time.perf_counter() - started
    lines = table(results)
    print("\n".join(lines))
    if args.report:
        from bench.report import write_result

        lines += ["", note(args.threads, args.lm_tokens, args.vlm_tokens, elapsed)]
        write_result(Path(args.report), "Edge latency in llama.cpp (paper Tables 5 and 6 protocol)",
                     "python -m " + " ".join(["bench.edge_latency"] + list(argv if argv is not None else sys.argv[1:])),
                     lines, note=f"llama-cpp-python {__import__('llama_cpp').__version__}, CPU only, "
                                 f"{args.threads} threads; random weights", headline=headline(results))
    return 0


def headline(results: Sequence[Result]) -> Headline:
    """The summary row: generation tokens/s of each LM and total seconds of each VLM, in the table's order."""
    from bench.report import Headline

    lm = [f"{r.run.size} {r.run.file_type} {r.gen_tps:.1f}" for r in results if r.run.projector is None]
    vlm = [f"{r.run.size} {r.run.projector} {r.total_s:.1f} s" for r in results if r.run.projector is not None]
    return Headline("; ".join(filter(None, [lm and "LM generation tok/s: " + ", ".join(lm),
                                            vlm and "VLM total: " + ", ".join(vlm)])))


def note(threads: int, lm_tokens: int, vlm_tokens: int, elapsed: float) -> str:
    return (f"Weights are random (jax.random init, exported with our GGUF writer); speed does not depend on "
            f"them, but the tokenizer is a {TOKENIZER_PIECES}-piece SentencePiece model trained on generated "
            f"text (the 32000 vocabulary padded with [PADi]), so prompts are a little longer in tokens than "
            f"with LLaMA's tokenizer. This is a shared {os.cpu_count()}-core x86 CPU with {threads} llama.cpp "
            f"threads; the paper's Tables 5/6 are a Snapdragon 888 (CPU, 4-bit) and a Jetson AGX Orin (CUDA), "
            f"so compare ratios (q4 vs q8, 1.4B vs 2.7B, LDP vs MLP), not absolute numbers. LM: prompt "
            f"{LM_PROMPT!r}, {lm_tokens} tokens out. VLM: vicuna_v1 system message + USER: <image 336x336>\\n"
            f"{VLM_QUESTION} ASSISTANT:, {vlm_tokens} tokens out; LLM 4-bit, mmproj f16; the 1.4B and 2.7B VLMs use the "
            f"ViT-L/14-336 tower (23 blocks run), tiny uses a 64-wide 2-block tower on the same 24x24 grid. "
            f"Prompt tokens include the visual tokens (LDP 144, MLP 576). Load = llama.cpp's t_load_ms for the "
            f"LLM (it runs to the end of the first decode, a one-token warm-up as in llama.cpp's CLI); image encode = the prefill's "
            f"wall time minus llama.cpp's prompt-decode time (mtmd preprocessing + ViT + projector); sample = "
            f"llama.cpp's sampler chain (EOS masked, greedy); total = wall time of loading both files, the "
            f"prefill and generation. Load avg = 1-minute load average after each run (other jobs share the "
            f"machine, so speeds vary). The whole protocol took {elapsed / 60:.1f} min, exports included.")


if __name__ == "__main__":
    sys.exit(main())
