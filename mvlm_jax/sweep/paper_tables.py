"""The paper's ablation rows (MobileVLM, arXiv 2312.16886v2, Tables 7, 9, 10, 11), printed beside a sweep's
trials that reproduce them (`Trial.paper = (table, row)`). Columns as Table 4 (mvlm_jax.eval.paper).

The MobileVLM 1.7B baseline (56.1 / 54.7 / 41.5 / 84.5 / 1196.2 / 53.2) is the same run in Table 4, as
Table 7's 1.4B LDP row, Table 9's LDP row, Table 10's Vicuna + vicuna_v1 row and Table 11's LDP row.
"""
from __future__ import annotations

COLUMNS = ("GQA", "SQA-I", "VQA-T", "POPE", "MME-P", "MMB-dev")
_BASELINE = (56.1, 54.7, 41.5, 84.5, 1196.2, 53.2)

_ROWS: dict[str, dict[str, tuple[float, ...]]] = {
    # Table 7: vision encoder (scale / patch / resolution) x projector, MobileLLaMA 1.4B and 2.7B
    "table7": {
        "1.4b-b16_224-mlp": (55.3, 52.8, 38.3, 83.2, 1079.9, 46.1),
        "1.4b-l14_224-mlp": (55.8, 53.4, 40.9, 83.9, 1104.4, 50.9),
        "1.4b-g14_224-mlp": (57.5, 54.2, 38.0, 84.9, 1123.3, 53.9),
        "1.4b-l14_336-mlp": (56.9, 53.6, 43.7, 85.7, 1137.7, 52.8),
        "1.4b-l14_336-ldp": _BASELINE,
        "2.7b-b16_224-mlp": (57.0, 58.4, 43.1, 83.8, 1212.2, 54.6),
        "2.7b-l14_224-mlp": (57.9, 58.6, 45.3, 85.1, 1285.0, 57.7),  # printed "L-P16-S224" with 256 tokens
        "2.7b-g14_224-mlp": (59.5, 58.9, 43.9, 85.1, 1275.6, 59.5),
        "2.7b-l14_336-mlp": (59.1, 58.3, 47.3, 85.8, 1333.1, 57.1),
        "2.7b-l14_336-ldp": (59.0, 61.0, 47.5, 84.9, 1288.9, 59.6),
    },
    # Table 9: projector designs on CLIP-L/14-336, MobileLLaMA 1.4B
    "table9": {
        "mlp": (56.9, 53.6, 43.7, 85.7, 1137.7, 52.8),
        "no_front_pw": (54.9, 52.9, 40.2, 84.0, 1150.8, 50.3),
        "ldp": _BASELINE,
        "3_blocks": (55.3, 53.9, 40.8, 84.6, 1166.3, 53.0),
        "downsample_first": (55.6, 54.3, 41.5, 84.6, 1166.2, 52.8),
    },
    # Table 10: SFT of the LLM x conversation template in VLM training (1.4B, LDP)
    "table10": {
        "base-llava_llama_2": (55.8, 52.6, 40.5, 84.4, 1111.5, 52.0),
        "base-vicuna_v1": (56.1, 53.0, 40.5, 84.6, 1148.5, 50.3),
        "alpaca-llava_llama_2": (55.2, 54.8, 40.6, 84.9, 1171.1, 51.9),
        "alpaca-vicuna_v1": (55.5, 53.1, 40.6, 83.8, 1168.0, 47.7),
        "sharegpt-vicuna_v1": _BASELINE,
    },
    # Table 11: 144 visual tokens by LDP against a reduced input resolution (168 px, MLP)
    "table11": {
        "ldp": _BASELINE,
        "rir": (53.9, 53.1, 37.1, 81.5, 1072.5, 46.7),
    },
    # Table 4: stage 2 fine-tuning the whole LLM against LoRA (MobileVLM 1.7B / 3B)
    "table4": {
        "1.7b-full": _BASELINE,
        "1.7b-lora": (57.0, 53.1, 42.3, 86.0, 1143.7, 50.4),
        "3b-full": (59.0, 61.0, 47.5, 84.9, 1288.9, 59.6),
        "3b-lora": (58.4, 59.0, 46.7, 84.6, 1296.4, 57.0),
    },
}


def paper_row(reference: tuple[str, str] | list[str] | None) -> dict[str, float] | None:
    """{column: score} of (table, row), or None."""
    if not reference:
        return None
    table, row = reference
    values = _ROWS.get(table, {}).get(row)
    return dict(zip(COLUMNS, values)) if values else None


def check_reference(reference: tuple[str, str]) -> None:
    table, row = reference
    if row not in _ROWS.get(table, {}):
        raise KeyError(f"no paper row {table}/{row}; known: {', '.join(f'{t}/{r}' for t in _ROWS for r in _ROWS[t])}")
