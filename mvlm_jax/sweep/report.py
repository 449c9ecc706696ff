"""SWEEP/results.json, SWEEP/report.md and the figures, rebuilt from the plan and whatever stages have
finished (a partial report marks what is pending). One row per trial: the overrides that differ from the
baseline trial, visual tokens, parameters, trained tokens, scores (the paper's beside them where it has
the row), edge latency and GGUF sizes, and the decoding speed predicted for the paper's devices."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mvlm_jax.sweep import edge_model, plots, tasks
from mvlm_jax.sweep.paper_tables import paper_row
from mvlm_jax.sweep.plan import Plan, varied_overrides
from mvlm_jax.sweep.state import DONE, FAILED, StatusStore, write_json

FIGURES = {"losses": "loss_curves.png", "pareto": "accuracy_vs_latency.png", "tokens": "accuracy_vs_visual_tokens.png"}


def _trained_tokens(plan: Plan, stage_ids: list[str]) -> int:
    """Real (unpadded) tokens over every training stage of the trial, from metrics.jsonl."""
    total = 0.0
    for stage_id in stage_ids:
        if plan.stages[stage_id].kind == "train":
            total += sum(r["tokens_per_s"] * r["step_time_s"] for r in plots.read_metrics(plan.stage_dir(stage_id) / "run"))
    return int(round(total))


def trial_row(plan: Plan, store: StatusStore, name: str, varied: dict[str, Any]) -> dict[str, Any]:
    trial = plan.trials[name]
    ids = trial["stages"]
    statuses = {stage: store.read(stage_id) for stage, stage_id in ids.items()}
    row: dict[str, Any] = {"trial": name, "baseline": trial["baseline"], "overrides": varied,
                           "visual_tokens": trial["info"].get("visual_tokens"),
                           "parameters": trial["info"].get("parameters"),
                           "trained_tokens": _trained_tokens(plan, list(ids.values())),
                           "stages": {stage: {"id": ids[stage], "status": s["status"], "seconds": s.get("seconds"),
                                              **({"error": s.get("error"), "log": s.get("log")}
                                                 if s["status"] == FAILED else {})}
                                      for stage, s in statuses.items()}}
    failed = [stage for stage, s in statuses.items() if s["status"] == FAILED]
    pending = [stage for stage, s in statuses.items() if s["status"] != DONE]
    row["status"] = "failed" if failed else ("done" if not pending else "pending")
    results = {stage: tasks.read_result(plan.stage_dir(ids[stage])) for stage in ids
               if plan.stages[ids[stage]].kind != "train"}
    evaluation, export, edge = results.get("eval"), results.get("export"), results.get("edge")
    row["scores"] = (evaluation or {}).get("scores", {})
    row["baselines"] = (evaluation or {}).get("baselines", {})
    row["paper"] = paper_row(trial["paper"])
    if export:
        first = next(iter(export["files"].values()))
        row["gguf_mb"] = {t: {"llm": f["llm_mb"], "mmproj": f["mmproj_mb"]} for t, f in export["files"].items()}
        row["mmproj_error"] = export.get("mmproj_error")
        row["predicted_tokens_per_s"] = {device: edge_model.predict_tokens_per_s(device, first["llm_mb"] * 2**20)
                                         for device in edge_model.PAPER_ROWS}
    if edge:
        row["edge"] = {k: edge[k] for k in ("protocol", "gen_tokens_per_s", "total_s", "prompt_tokens", "image_ms")}
    return row


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(plan: Plan, rows: list[dict[str, Any]], counts: dict[str, int]) -> str:
    columns = list(dict.fromkeys(c for r in rows for c in r["scores"]))
    lines = [f"# Sweep {plan.source}", "",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}; stages: " + ", ".join(f"{v} {k}" for k, v in counts.items())
             + ". Rerun the same command to finish what is pending or failed.", "",
             "| trial | overrides (against the baseline) | status | visual tokens | parameters | trained tokens | "
             + " | ".join(f"{c} (ours / paper)" for c in columns)
             + " | tok/s here | total s here | LLM GGUF MB | mmproj MB | Snapdragon 888 tok/s (model) | Orin tok/s (model) |",
             "|" + "---|" * (6 + len(columns) + 6)]
    for r in rows:
        name = f"**{r['trial']}** (baseline)" if r["baseline"] else r["trial"]
        overrides = "; ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        scores = [f"{_fmt(r['scores'].get(c))} / {_fmt((r['paper'] or {}).get(c))}" for c in columns]
        edge, gguf = r.get("edge") or {}, next(iter((r.get("gguf_mb") or {}).values()), {})
        predicted = r.get("predicted_tokens_per_s") or {}
        lines.append(" | ".join(["", name, overrides, r["status"], _fmt(r["visual_tokens"]), _fmt(r["parameters"]),
                                 _fmt(r["trained_tokens"]), *scores, _fmt(edge.get("gen_tokens_per_s")),
                                 _fmt(edge.get("total_s"), 2), _fmt(gguf.get("llm"), 2), _fmt(gguf.get("mmproj"), 2),
                                 _fmt(predicted.get("snapdragon_888")), _fmt(predicted.get("jetson_orin")), ""]).strip())
    baselines = {(kind, c): r["baselines"][kind].get(c) for r in rows for kind in r["baselines"] for c in columns}
    if baselines:
        lines += ["", "Baselines of the same questions (per trial): " + "; ".join(
            f"{r['trial']}: " + ", ".join(f"{kind} {_fmt(v.get(c))}" for kind, v in r["baselines"].items() for c in columns)
            for r in rows if r["baselines"])]
    problems = [(r["trial"], stage, s) for r in rows for stage, s in r["stages"].items() if s["status"] == FAILED]
    if problems:
        lines += ["", "## Failed stages", "", "| trial | stage | error | log |", "|---|---|---|---|"]
        lines += [f"| {t} | {stage} ({s['id']}) | {s.get('error')} | {s.get('log')} |" for t, stage, s in problems]
    notes = [f"{r['trial']}: {r['mmproj_error']}" for r in rows if r.get("mmproj_error")]
    if notes:
        lines += ["", "Edge latency of the trials whose projector llama.cpp cannot run is the LLM alone (Table 5 "
                  "protocol): " + " ".join(notes)]
    lines += ["", "## Predicted speed on the paper's devices", "",
              "Memory-bandwidth-bound decoding: tokens/s = effective bandwidth / LLM GGUF bytes, one bandwidth per "
              "device fitted on the paper's Table 5 rows (docs/SWEEPS.md). Its error on the paper's rows:", "",
              *edge_model.calibration_table(), "",
              f"![loss curves]({FIGURES['losses']})", "", f"![accuracy vs edge latency]({FIGURES['pareto']})", "",
              f"![accuracy vs visual tokens]({FIGURES['tokens']})", ""]
    return "\n".join(lines)


def write_report(plan: Plan, store: StatusStore) -> dict[str, Any]:
    """Write results.json, report.md and the figures into the sweep directory; returns results.json's dict."""
    varied = varied_overrides(plan)
    rows = [trial_row(plan, store, name, varied[name]) for name in plan.trials]
    counts: dict[str, int] = {}
    for stage_id in plan.stages:
        status = store.status(stage_id)
        counts[status] = counts.get(status, 0) + 1
    results = {"source": plan.source, "written": time.time(), "stage_counts": counts, "trials": rows,
               "edge_model": edge_model.calibration(), "figures": FIGURES}
    write_json(plan.sweep_dir / "results.json", results)
    (plan.sweep_dir / "report.md").write_text(markdown(plan, rows, counts))
    curves: dict[str, dict[str, list[dict]]] = {}
    for stage_id, stage in plan.stages.items():
        if stage.kind == "train":
            rows_ = plots.read_metrics(plan.stage_dir(stage_id) / "run")
            if rows_:
                curves.setdefault(stage.name, {})[",".join(stage.trials)] = rows_
    plots.loss_curves(curves, plan.sweep_dir / FIGURES["losses"])
    points = [{"trial": r["trial"], "accuracy": next(iter(r["scores"].values()), None),
               "latency": (r.get("edge") or {}).get("total_s"), "tokens": r["visual_tokens"]} for r in rows]
    plots.scatter(points, "latency", "accuracy", "edge latency here: total s for the paper's prompt",
                  "accuracy (first benchmark)", plan.sweep_dir / FIGURES["pareto"], front=True)
    plots.scatter(points, "tokens", "accuracy", "visual tokens", "accuracy (first benchmark)",
                  plan.sweep_dir / FIGURES["tokens"])
    return results
