"""Decoding speed on the paper's devices, predicted from the bytes read per generated token.

Generating one token reads every weight of the LLM once, so a memory-bound decoder runs at about
    tokens/s = effective bandwidth / bytes per token,
with bytes per token taken as the LLM's GGUF file size (the KV cache is small at these lengths). One
effective bandwidth per device is fitted (least squares in log space, i.e. the geometric mean of
size x tokens/s) on the paper's Table 5 rows, MobileLLaMA 1.4B and 2.7B at q4_k_s; the Table 6 VLM row
(longer context, image tokens) is kept out of the fit and shows how far the model is off there.
Sources: MobileVLM, arXiv 2312.16886v2, Tables 5 and 6 ("Eval" column; sizes in GB as printed, read as 1e9).
"""
from __future__ import annotations

import math

GB = 1e9
# device -> [(row, GGUF size in GB, Eval tokens/s, in the fit)]
PAPER_ROWS: dict[str, list[tuple[str, float, float, bool]]] = {
    "snapdragon_888": [("MobileLLaMA 1.4B q4_k_s (Table 5)", 0.7, 28.32, True),
                       ("MobileLLaMA 2.7B q4_k_s (Table 5)", 1.5, 14.71, True),
                       ("MobileVLM 1.7B, LLM q4_k_s (Table 6)", 0.7, 21.54, False)],
    "jetson_orin": [("MobileLLaMA 1.4B q4_k_s (Table 5)", 0.7, 66.79, True),
                    ("MobileLLaMA 2.7B q4_k_s (Table 5)", 1.5, 38.99, True),
                    ("MobileVLM 1.7B, LLM q4_k_s (Table 6)", 0.7, 65.27, False)],
}
DEVICE_NAMES = {"snapdragon_888": "Snapdragon 888", "jetson_orin": "Jetson AGX Orin"}


def bandwidth(device: str) -> float:
    """Fitted effective bandwidth, bytes/s."""
    rows = [(size, speed) for _, size, speed, fit in PAPER_ROWS[device] if fit]
    return math.exp(sum(math.log(size * GB * speed) for size, speed in rows) / len(rows))


def predict_tokens_per_s(device: str, llm_bytes: float) -> float:
    return bandwidth(device) / llm_bytes


def calibration() -> list[dict]:
    """Per device and paper row: the paper's tokens/s, the model's, and the relative error."""
    out = []
    for device, rows in PAPER_ROWS.items():
        for row, size, speed, fit in rows:
            predicted = predict_tokens_per_s(device, size * GB)
            out.append({"device": DEVICE_NAMES[device], "row": row, "size_gb": size, "paper": speed,
                        "predicted": predicted, "error": predicted / speed - 1, "in_fit": fit,
                        "bandwidth_gb_s": bandwidth(device) / GB})
    return out


def calibration_table() -> list[str]:
    lines = ["| device | paper row | GGUF GB | paper tok/s | model tok/s | error | fitted bandwidth |",
             "|---|---|---|---|---|---|---|"]
    for c in calibration():
        lines.append(f"| {c['device']} | {c['row']}{'' if c['in_fit'] else ' (not fitted)'} | {c['size_gb']} | "
                     f"{c['paper']:.2f} | {c['predicted']:.2f} | {c['error']:+.1%} | {c['bandwidth_gb_s']:.1f} GB/s |")
    return lines
