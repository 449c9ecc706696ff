"""The edge-latency bench on the tiny shapes: random-weight checkpoints exported to GGUF and timed in
llama.cpp; checks the rows and that llama.cpp's counts match the prompts and the requested token counts."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from bench import edge_latency as bench  # noqa: E402

LM_TOKENS, VLM_TOKENS = 6, 4


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    runs = bench.plan_runs(["tiny"], ["q4_k_s", "q8_0"], ["ldp", "mlp2x_gelu"], ["tiny"], ["q4_k_s"])
    workdir = tmp_path_factory.mktemp("edge")
    return workdir, bench.run_protocol(runs, workdir, LM_TOKENS, VLM_TOKENS, threads=1, log=lambda line: None)


def _tokens(path, text: str, add_bos: bool = True) -> int:
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return len(llm.tokenize(text.encode(), add_bos=add_bos, special=True))
    finally:
        llm.close()


def test_rows_and_counts(results):
    from data_pipelines.templates import VICUNA_V1_SYSTEM

    workdir, rows = results
    assert [(r.run.size, r.run.file_type, r.run.projector) for r in rows] == [
        ("tiny", "q4_k_s", None), ("tiny", "q8_0", None), ("tiny", "q4_k_s", "ldp"), ("tiny", "q4_k_s", "mlp2x_gelu")]
    out, name = bench.export_dir(workdir, "tiny", "ldp", "q4_k_s")
    llm_path = out / f"{name}-q4_k_s.gguf"
    lm_prompt = _tokens(llm_path, bench.LM_PROMPT)
    vlm_text = (_tokens(llm_path, f"{VICUNA_V1_SYSTEM} USER: ")
                + _tokens(llm_path, f"\n{bench.VLM_QUESTION} ASSISTANT:", add_bos=False))
    for r in rows:
        vlm = r.run.projector is not None
        assert r.gen_tokens == (VLM_TOKENS if vlm else LM_TOKENS)
        assert r.visual_tokens == {None: 0, "ldp": 144, "mlp2x_gelu": 576}[r.run.projector]
        assert r.prompt_tokens == (vlm_text if vlm else lm_prompt) + r.visual_tokens
        assert (r.image_ms is not None) == vlm
        numbers = [r.gguf_mb, r.load_ms, r.prompt_ms, r.gen_ms, r.sample_ms, r.total_s, r.prompt_tps, r.gen_tps]
        assert all(x > 0 for x in numbers) and (not vlm or r.image_ms > 0)
        assert r.total_s * 1e3 >= r.prompt_ms + r.gen_ms  # the wall total holds llama.cpp's decode times
    # Checkpoints are gone once exported; the exports stay for a re-run.
    assert not any((workdir / "ckpt").iterdir())
    table = bench.table(rows)
    assert len(table) == 2 + len(rows) and all(line.count("|") == len(bench.HEADER) + 1 for line in table)
    figure = bench.headline(rows).figure  # the summary row of docs/PERFORMANCE.md
    assert figure.startswith("LM generation tok/s: tiny q4_k_s ") and "; VLM total: tiny ldp " in figure


def test_rerun_reuses_exports(results):
    workdir, rows = results
    out, name = bench.export_dir(workdir, "tiny", "ldp", "q8_0")  # the LM rows' q8_0 file
    path = out / f"{name}-q8_0.gguf"
    before = path.stat().st_mtime_ns
    files = bench.ensure_exports(workdir, "tiny", "ldp", ["q8_0"], log=lambda line: None)
    assert files["q8_0"][0] == path and path.stat().st_mtime_ns == before
    assert not (workdir / "ckpt" / "tiny-ldp").exists()  # nothing was rebuilt
