"""Helpers the ablation sweeps are built from: the paper's chain at one of three scales.

  tiny   the tests' toy chain: tiny models, a few steps per stage, the tiny embedded world
  demo   the embedded world on a 2-core CPU: pretrain and SFT as `make demo` (shared by every trial), then
         shorter VLM stages (80 + 220 steps) so that the five Table 9 trials fit in about 45 minutes
  1.4b / 2.7b   the paper's recipes (experiments/*.py); the VLM stages start from an SFT checkpoint
         (arg llm=DIR, default ckpt/MobileLLaMA-SIZE-Chat), read LCS-558K / mix665k (pt=, it=, images=)
         and are scored on the paper's six benchmarks (bench=DIR, MobileVLM's benchmark_data)
"""
from mvlm_jax.sweep.spec import Trial, mobilevlm_chain
from mvlm_jax.train.recipes import parse_arg

SMALL = ("tiny", "demo")
DEMO_VLM_STEPS = {"vlm1": 80, "vlm2": 220}


def scale(arg):
    args = parse_arg(arg)
    return args.get("size", "demo"), args


def vlm_overrides(size, visual_tokens=144, **extra):
    """(vlm1, vlm2) overrides for `size`; at demo scale rows sized to the visual tokens (576 with an MLP)."""
    vlm1, vlm2 = dict(extra), dict(extra)
    if size == "tiny":
        vlm1.update({"train.total_steps": 2, "eval.every": 0})
        vlm2.update({"train.total_steps": 2, "eval.every": 0})
    elif size == "demo":
        vlm1.update({"train.total_steps": DEMO_VLM_STEPS["vlm1"], "eval.every": 40})
        vlm2.update({"train.total_steps": DEMO_VLM_STEPS["vlm2"], "eval.every": 110})
        if visual_tokens > 144:  # captions are 10-37 text tokens, conversations at most 360: one image per row
            vlm1.update({"data.seq_len": 640 if visual_tokens <= 576 else 1024, "data.images_per_row": 1})
            vlm2.update({"data.seq_len": 1024})
    return vlm1, vlm2


def chain(size, args, vlm=None, visual_tokens=144, stage2="2", llm_from="sft", sft=None, vlm1=None, vlm2=None,
          eval=None, sft_from_base=False):
    """The paper's chain at `size` with the VLM stages' `vlm` overrides (both stages); `eval` adds eval
    settings (mvlm_jax/sweep/tasks.py). At paper scale the VLM stages start from the released chat LLM
    (arg llm=DIR), or with `sft_from_base` from an SFT stage run here on the base LLM (arg base=DIR), or
    with from=scratch from pretraining run here."""
    first, second = vlm_overrides(size, visual_tokens, **(vlm or {}))
    first.update(vlm1 or {})
    second.update(vlm2 or {})
    if size in SMALL:
        few = {"train.total_steps": 2, "eval.every": 0} if size == "tiny" else {}
        return mobilevlm_chain(size, pretrain=few, sft={**few, **(sft or {})}, vlm1=first, vlm2=second, stage2=stage2,
                               llm_from=llm_from, eval={"questions": 6 if size == "tiny" else 300, **(eval or {})},
                               edge={"new_tokens": 8 if size == "tiny" else 256})
    data = {"pt": args.get("pt", "data/blip_laion_cc_sbu_558k.json"), "it": args.get("it", "data/llava_v1_5_mix665k.json"),
            "images": args.get("images", "data/images")}
    first.update({"data.files": (data["pt"],), "data.image_root": data["images"]})
    second.update({"data.files": (data["it"],), "data.image_root": data["images"]})
    start = {} if args.get("from") == "scratch" else {"sft": args.get("llm", f"ckpt/MobileLLaMA-{size.upper()}-Chat")}
    if llm_from == "pretrain" or (sft_from_base and args.get("from") != "scratch"):
        start = {"pretrain": args.get("base", f"ckpt/MobileLLaMA-{size.upper()}-Base")}
    slurm = {"nodes": int(args.get("nodes", 1)), "gpus_per_node": int(args.get("gpus", 8)), "time_min": 600}
    return mobilevlm_chain(size, sft=sft, vlm1=first, vlm2=second, stage2=stage2, llm_from=llm_from, start_from=start,
                           eval={"benchmarks": "all", "questions": 0, "data_root": args.get("bench", "benchmark_data"),
                                 **(eval or {})},
                           resources={"vlm1": slurm, "vlm2": slurm, "sft": slurm, "pretrain": slurm})


def trial(name, stages, paper=None, baseline=False):
    return Trial(name=name, stages=stages, paper=paper, baseline=baseline)
