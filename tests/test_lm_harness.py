"""The lm-eval model `mvlm_jax` against lm-eval's own `hf` model on the same tiny random LLaMA (float32, CPU):
equal log-likelihoods (multiple choice through a local-file task, empty contexts, rolling windows) and
equal greedy generations cut at stop strings; the Table-3 report and the data-root checks."""
import functools
import json
import os
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import hf_builders  # noqa: E402
from data_pipelines.tokenizer import train_tokenizer  # noqa: E402
from mvlm_jax.checkpoint import load_model, save_model  # noqa: E402
from mvlm_jax.convert.hf import import_hf  # noqa: E402
from mvlm_jax.eval import lm_cli, lm_tasks  # noqa: E402
from mvlm_jax.eval.lm_harness import MvlmJaxLM  # noqa: E402
from mvlm_jax.generate.sampling import SamplingConfig  # noqa: E402
from mvlm_jax.models.config import PROJECTOR_PRESETS, VISION_PRESETS, VLMConfig  # noqa: E402

MAX_LENGTH = 48
VOCAB = 400
ARC_DOCS = [
    {"id": "q1", "question": "Which gas do plants take in from the air?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "q2", "question": "What makes the sound when a bell rings?",
     "choices": {"text": ["vibration", "light", "heat"], "label": ["1", "2", "3"]}, "answerKey": "1"},
    {"id": "q3", "question": "Which of these is a source of light at night?",
     "choices": {"text": ["the moon reflecting sunlight", "a rock", "a tree", "the soil"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "q4", "question": "What do the roots of a plant take from the soil?",
     "choices": {"text": ["water", "sand", "wind", "stars"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
]
CORPUS = [f"{doc['question']} {text}." for doc in ARC_DOCS for text in doc["choices"]["text"]] + [
    "Question: the cat sat on the mat and looked at a red ball.\nAnswer: yes, it did.",
    "Plants need water, light and carbon dioxide to grow; animals need food and oxygen.",
] * 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, hf): the same random LLaMA as our checkpoint and as lm-eval's HFLM, one SentencePiece model."""
    root = tmp_path_factory.mktemp("lm_harness")
    tokenizer = train_tokenizer(CORPUS, VOCAB, root / "tok.model")
    model = hf_builders.llama(root / "hf", seed=11, vocab_size=VOCAB, max_position_embeddings=MAX_LENGTH)
    # zero logits for the 256 byte-fallback pieces (ids 3..258), so that greedy text is made of real pieces:
    # invalid UTF-8 byte runs would decode to different replacement characters in HF and SentencePiece
    with torch.no_grad():
        model.lm_head.weight[3:259] = 0.0
    model.save_pretrained(root / "hf", safe_serialization=True)
    shutil.copyfile(root / "tok.model", root / "hf" / "tokenizer.model")
    # transformers 5 converts tokenizer.model to a `tokenizers` BPE with SentencePiece's exact ids; BOS must be
    # asked for (LlamaTokenizer.from_pretrained instead would default to legacy=False and no BOS, not the
    # 2023 slow LLaMA tokenizer the official evaluation used)
    transformers.AutoTokenizer.from_pretrained(root / "hf", add_bos_token=True).save_pretrained(root / "hf")
    import_hf(root / "hf", root / "ckpt")
    from lm_eval.models.huggingface import HFLM

    ours = MvlmJaxLM(ckpt=str(root / "ckpt"), batch_size=4, max_length=MAX_LENGTH)
    hf = HFLM(pretrained=str(root / "hf"), dtype="float32", device="cpu", batch_size=4, max_length=MAX_LENGTH)
    assert ours.sp.vocab_size == tokenizer.vocab_size == VOCAB
    return root, ours, hf


@pytest.fixture(scope="module")
def arc_tasks(tmp_path_factory):
    """A data root with four ARC-Easy-schema documents and the task directory that reads them."""
    root = tmp_path_factory.mktemp("lm_data")
    (root / "data" / "arc_easy").mkdir(parents=True)
    (root / "data" / "arc_easy" / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ARC_DOCS))
    task_dir = lm_tasks.write_task_dir(root / "data", root / "tasks", ["arc_easy"])
    return root, task_dir, TaskManager(include_path=str(task_dir), include_defaults=False)


def requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i, metadata=("t", i, 1)) for i, a in enumerate(args)]


def test_tokens_as_hf_llama_tokenizer(models):
    """BOS first, SentencePiece ids after: what HF's LLaMA tokenizer gives lm-eval's hf model."""
    _, ours, hf = models
    for text in ["Question: Which gas do plants take in?\nAnswer:", " carbon dioxide", "a  b\n\nc"]:
        assert ours.tok_encode(text) == hf.tok_encode(text) == [1] + ours.sp.encode(text)
        assert ours.tok_encode(text, add_special_tokens=False) == hf.tok_encode(text, add_special_tokens=False)
    assert ours.prefix_token_id == hf.prefix_token_id == 1 and ours.eot_token_id == hf.eot_token_id == 2


def test_multiple_choice_task_equals_hf(models, arc_tasks):
    """The local arc_easy task: every request's (log-likelihood, is_greedy) within 1e-4, equal accuracies."""
    _, ours, hf = models
    _, _, manager = arc_tasks
    runs = [lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"], task_manager=manager, num_fewshot=0,
                                    log_samples=True, bootstrap_iters=0) for lm in (ours, hf)]
    samples = [sorted(run["samples"]["arc_easy"], key=lambda s: s["doc_id"]) for run in runs]
    assert [s["doc"]["id"] for s in samples[0]] == ["q1", "q2", "q3", "q4"]  # our local documents
    assert samples[0][0]["arguments"][1] == ("Question: Which gas do plants take in from the air?\nAnswer:",
                                             " carbon dioxide")
    for mine, theirs in zip(*samples):
        assert len(mine["resps"]) == len(theirs["resps"]) == len(mine["doc"]["choices"]["text"])
        for (ll, greedy), (ll_ref, greedy_ref) in zip((r[0] for r in mine["resps"]), (r[0] for r in theirs["resps"])):
            assert abs(ll - ll_ref) < 1e-4 and greedy == greedy_ref
    acc = [run["results"]["arc_easy"]["acc,none"] for run in runs]
    assert acc[0] == acc[1]
    # the accuracy is the argmax of the log-likelihoods against answerKey, worked from the responses
    picks = [int(np.argmax([r[0][0] for r in s["resps"]])) for s in samples[0]]
    gold = [d["choices"]["label"].index(d["answerKey"]) for d in ARC_DOCS]
    assert acc[0] == pytest.approx(np.mean(np.equal(picks, gold)))


def test_loglikelihood_edge_cases_equal_hf(models):
    """Empty context (BOS prefix), one-token continuations sharing a context, left truncation."""
    _, ours, hf = models
    long_context = " ".join(["Plants need water and light"] * 12)  # past max_length: truncated from the left
    args = [("", "Plants need water."), ("Question: the cat sat?\nAnswer:", " yes"),
            ("Question: the cat sat?\nAnswer:", " no"), ("Question: the cat sat?\nAnswer:", " y"),
            (long_context, " to grow."), ("a", "b")]
    assert len(ours.tok_encode(long_context)) > MAX_LENGTH
    mine = ours.loglikelihood(requests("loglikelihood", args))
    theirs = hf.loglikelihood(requests("loglikelihood", args))
    for (ll, greedy), (ll_ref, greedy_ref) in zip(mine, theirs):
        assert math.isfinite(ll) and abs(ll - ll_ref) < 1e-4 and greedy == greedy_ref


def test_rolling_loglikelihood_equals_hf(models):
    _, ours, hf = models
    text = " ".join(CORPUS[:6])
    assert len(ours.tok_encode(text)) > 2 * MAX_LENGTH  # three or more windows
    mine = ours.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), ("short text",)]))
    theirs = hf.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), ("short text",)]))
    np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
    # windows add up: the long text scores far lower than a short one
    assert mine[0] < mine[1] < 0


def test_generate_until_stops_at_stop_string_and_equals_hf(models):
    _, ours, hf = models
    prompts = ["Question: Which gas do plants take in?\nAnswer:", "The cat", "Plants need water, light and"]
    free_args = [(p, {"until": [], "max_gen_toks": 10}) for p in prompts]
    free = ours.generate_until(requests("generate_until", free_args))
    assert free == hf.generate_until(requests("generate_until", free_args))
    ids = ours.generate_ids([ours.tok_encode(p) for p in prompts], SamplingConfig(max_new_tokens=10), ["</s>"])
    assert free == [ours.tok_decode(row) for row in ids]
    # a stop string from the middle of each free continuation: the text is cut right before its first
    # occurrence, and generation stops as soon as it appears
    stops = [text[len(text) // 2:len(text) // 2 + 2] for text in free]
    assert all(len(stop) == 2 for stop in stops)
    args = [(p, {"until": [stop], "max_gen_toks": 10, "do_sample": False}) for p, stop in zip(prompts, stops)]
    cut = ours.generate_until(requests("generate_until", args))
    assert cut == [text[:text.index(stop)] for text, stop in zip(free, stops)]
    assert cut == hf.generate_until(requests("generate_until", args))
    early = ours.generate_ids([ours.tok_encode(p) for p in prompts], SamplingConfig(max_new_tokens=10), stops)
    for row, full, stop in zip(early, ids, stops):
        assert row == full[:len(row)] and len(row) < len(full) and stop in ours.tok_decode(row)
        assert stop not in ours.tok_decode(row[:-1])


def test_registered_and_built_from_arg_string(models):
    root, _, _ = models
    cls = get_model("mvlm_jax")
    assert cls is MvlmJaxLM
    lm = cls.create_from_arg_string(f"ckpt={root / 'ckpt'},max_length=32", {"batch_size": 2, "device": None})
    assert (lm.batch_size, lm.max_length, lm.rank, lm.world_size) == (2, 32, 0, 1)
    with pytest.raises(TypeError, match="max_len"):
        cls.create_from_arg_string(f"ckpt={root / 'ckpt'},max_len=32")


def test_llm_of_a_vlm_checkpoint_and_single_process_collectives(models, tmp_path):
    """A VLM checkpoint is scored by its llm/ part; the evaluator's gather helpers are identities alone."""
    root, ours, _ = models
    params, config = load_model(root / "ckpt")
    vlm = VLMConfig(vision=VISION_PRESETS["tiny"], projector=PROJECTOR_PRESETS["ldp"], llm=config)
    save_model(tmp_path / "vlm", {"llm": params, "vision": {"unused": np.zeros(2, np.float32)},
                                  "projector": {"unused": np.zeros(2, np.float32)}}, vlm, tokenizer=root / "tok.model")
    as_vlm = MvlmJaxLM(ckpt=str(tmp_path / "vlm"), batch_size=4, max_length=MAX_LENGTH)
    args = [("Question: the cat sat?\nAnswer:", " yes"), ("", "Plants need water.")]
    assert as_vlm.loglikelihood(requests("loglikelihood", args)) == ours.loglikelihood(requests("loglikelihood", args))
    assert ours.all_gather(torch.tensor(3)).tolist() == [3]
    assert ours.gather_object({"acc": [1, 0]}) == [{"acc": [1, 0]}]


def test_mvlm_eval_lm_writes_results_and_report(models, arc_tasks, tmp_path, capsys):
    root, ours, _ = models
    data = arc_tasks[0] / "data"
    code = lm_cli.main(["--ckpt", str(root / "ckpt"), "--tasks", "arc_easy", "--data-root", str(data), "--out",
                        str(tmp_path), "--batch-size", "4", "--max-length", str(MAX_LENGTH)])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["report.md", "results.json"]
    results = json.loads((tmp_path / "lm" / "results.json").read_text())
    assert results["n-samples"]["arc_easy"]["effective"] == len(ARC_DOCS)
    data_files = results["configs"]["arc_easy"]["dataset_kwargs"]["data_files"]
    assert data_files == {"test": str(data / "arc_easy" / "test.jsonl")}
    # accuracy by hand: argmax of our log-likelihoods of " " + choice after the arc_easy prompt
    picks = [int(np.argmax([ll for ll, _ in ours.loglikelihood(requests("loglikelihood", [
        (f"Question: {d['question']}\nAnswer:", f" {text}") for text in d["choices"]["text"]]))])) for d in ARC_DOCS]
    acc = np.mean([pick == d["choices"]["label"].index(d["answerKey"]) for pick, d in zip(picks, ARC_DOCS)])
    assert results["results"]["arc_easy"]["acc,none"] == pytest.approx(acc)
    row = f"| ours (ckpt) | - | {acc:.4f} | - | - | - | - | - | - | - | - | - |"
    assert row in (tmp_path / "lm" / "report.md").read_text() and row in capsys.readouterr().out


def test_lm_eval_command_line_finds_the_model(models, arc_tasks, tmp_path, monkeypatch):
    """`mvlm eval lm harness ...` is lm-eval's own CLI with `mvlm_jax` registered: the model comes from
    --model/--model_args, the task from --include_path."""
    root, _, _ = models
    # only to keep the test fast: lm-eval's CLI indexes its ~14k built-in YAMLs (tens of seconds here), which
    # our include_path task does not need (it includes its built-in YAML by path)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    code = lm_cli.main(["harness", "--model", "mvlm_jax", "--model_args",
                        f"ckpt={root / 'ckpt'},max_length={MAX_LENGTH}",
                        "--tasks", "arc_easy", "--include_path", str(arc_tasks[1]), "--batch_size", "4",
                        "--output_path", str(tmp_path)])
    assert code == 0
    [written] = list(tmp_path.rglob("results_*.json"))
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "mvlm_jax" and results["n-samples"]["arc_easy"]["effective"] == len(ARC_DOCS)


def test_the_lm_eval_script_itself_runs_the_model(models, arc_tasks, tmp_path):
    """`lm_eval --model mvlm_jax ...`, lm-eval's own console script: `make install` put the .pth line of
    mvlm_jax.eval.lm_plugin into site-packages, which registers the model when that script starts."""
    import subprocess
    import sysconfig

    from mvlm_jax.eval import lm_plugin

    pth = Path(sysconfig.get_paths()["purelib"]) / lm_plugin.PTH_NAME
    assert pth.is_file() and pth.read_text() == lm_plugin.PTH_LINE, "run `make install` (it writes the .pth file)"
    root, _, _ = models
    script = Path(sys.executable).parent / "lm_eval"
    done = subprocess.run([str(script), "--model", "mvlm_jax", "--model_args", f"ckpt={root / 'ckpt'},max_length={MAX_LENGTH}",
                           "--tasks", "arc_easy", "--include_path", str(arc_tasks[1]), "--batch_size", "4",
                           "--output_path", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    [written] = list(tmp_path.rglob("results_*.json"))
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "mvlm_jax" and results["n-samples"]["arc_easy"]["effective"] == len(ARC_DOCS)


def test_report_prints_paper_rows_and_average():
    ours = {column: None for column in lm_cli.TABLE3_COLUMNS}
    ours["ARC-e"] = 0.25
    table = lm_cli.render_table(ours, "ours (tiny)")
    lines = table.splitlines()
    assert lines[0].startswith("| model | ARC-c | ARC-e | BoolQ | RTE | Winogrande | TQA mc1 | TQA mc2 | HellaSwag")
    # the paper's own averages (Table 3): 0.4490, 0.4923, 0.4990, 0.4484
    assert lines[2] == ("| MobileLLaMA 1.4B (paper) | 0.26 | 0.61 | 0.53 | 0.53 | 0.59 | 0.21 | 0.35 | 0.43 | 0.73 "
                        "| 0.2497 | 0.4490 |")
    assert [line.rsplit("|", 2)[1].strip() for line in lines[2:6]] == ["0.4490", "0.4923", "0.4990", "0.4484"]
    assert lines[6] == "| ours (tiny) | - | 0.2500 | - | - | - | - | - | - | - | - | - |"
    full = {column: 0.5 for column in lm_cli.TABLE3_COLUMNS} | {"MMLU": 0.25}
    assert lm_cli.render_table(full, "x").splitlines()[-1].endswith("| 0.2500 | 0.4750 |")  # (9 * 0.5 + 0.25) / 10


def test_missing_data_file_names_its_path(tmp_path, capsys):
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "arc_easy" / "test.jsonl").write_text(json.dumps(ARC_DOCS[0]) + "\n")
    code = lm_cli.main(["--ckpt", str(tmp_path / "nothing"), "--tasks", "arc_easy,boolq", "--data-root",
                        str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'boolq' / 'validation'}.jsonl: missing" in err and "aps/super_glue" in err
    assert not (tmp_path / "out").exists()


def test_mmlu_split_by_subject(tmp_path):
    subjects = lm_tasks.mmlu_subjects()
    assert len(subjects) == 57 and "abstract_algebra" in subjects
    rows = lambda n: "".join(json.dumps({"question": f"{s} q{i}", "subject": s, "choices": ["a", "b", "c", "d"],
                                         "answer": i % 4}) + "\n" for s in subjects for i in range(n))
    (tmp_path / "data" / "mmlu").mkdir(parents=True)
    (tmp_path / "data" / "mmlu" / "test.jsonl").write_text(rows(2))
    (tmp_path / "data" / "mmlu" / "dev.jsonl").write_text(rows(4))  # 4 < 5 few-shot examples
    with pytest.raises(lm_tasks.LMDataError, match="at least 5 rows for subject"):
        lm_tasks.write_task_dir(tmp_path / "data", tmp_path / "tasks", ["mmlu"])
    (tmp_path / "data" / "mmlu" / "dev.jsonl").write_text(rows(5))
    out = lm_tasks.write_task_dir(tmp_path / "data", tmp_path / "tasks", ["mmlu"])
    anatomy = [json.loads(line) for line in (out / "mmlu" / "test" / "anatomy.jsonl").read_text().splitlines()]
    assert [row["question"] for row in anatomy] == ["anatomy q0", "anatomy q1"]
    import yaml
    config = yaml.safe_load((out / "mmlu" / "mmlu_anatomy.yaml").read_text())
    assert config["task"] == "mmlu_anatomy" and config["include"].endswith("mmlu/default/mmlu_anatomy.yaml")
    assert config["dataset_kwargs"]["data_files"]["dev"].endswith("mmlu/dev/anatomy.jsonl")
    assert (config["dataset_path"], config["test_split"], config["fewshot_split"]) == ("json", "test", "dev")
