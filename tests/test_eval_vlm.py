"""`mvlm eval vlm` end to end on a tiny VLM: answer records in the official format and order, the two
baselines, scores and report, resume after an interruption, processes and devices that split the work
without changing the answers, llama.cpp (GGUF) answering the same as JAX, and the errors a user meets."""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

import benchmark_fixtures_a
import benchmark_fixtures_b
import gguf_helpers
from data_pipelines.embedded.generate import generate
from mvlm_jax.eval import benchmark, cli as eval_cli, records, runner
from mvlm_jax.eval.answerers import JaxAnswerer
from mvlm_jax.eval.demo_world import questions as world_questions

OFFICIAL_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random MobileVLM at llama.cpp's 24x24 grid (336 / 14, no class token), with its tokenizer."""
    root = tmp_path_factory.mktemp("eval_ckpt")
    path, _ = gguf_helpers.checkpoint(root / "ckpt", gguf_helpers.vlm_config("ldp", class_token=False), seed=1)
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark_data")
    generate(root / "world", size="tiny", image_size=64)
    for module in (benchmark_fixtures_a, benchmark_fixtures_b):
        for name in benchmark.PAPER_BENCHMARKS:
            if hasattr(module, f"write_{name}"):
                getattr(module, f"write_{name}")(root)
    return root


@pytest.fixture(scope="module")
def gguf_files(ckpt, tmp_path_factory):
    from mvlm_jax.export.gguf_file import export_gguf

    return export_gguf(ckpt, tmp_path_factory.mktemp("gguf"), "f32")


@pytest.fixture(scope="module")
def world_run(ckpt, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    code = eval_cli.vlm_main(["--ckpt", str(ckpt), "--benchmark", "demo_world", "--data-root", str(data_root),
                              "--out", str(out), "--limit", "5", "--batch-size", "2", "--devices", "1"])
    assert code == 0
    return out


def test_records_order_baselines_scores_and_report(world_run, ckpt, data_root, capsys):
    answers = records.read_records(world_run / "demo_world" / "answers.jsonl")
    expected = world_questions(data_root)[:5]
    assert [a["question_id"] for a in answers] == [q.question_id for q in expected]
    assert all(OFFICIAL_KEYS <= set(a) and a["prompt"] == q.prompt for a, q in zip(answers, expected))
    # batching does not change an answer: each question alone at batch 1 gives the same tokens
    alone = JaxAnswerer.from_checkpoint(ckpt, batch_size=1).answer(expected, 16, blind=False)
    assert [a["metadata"]["ids"] for a in answers] == [list(x.ids) for x in alone]
    assert [a["text"] for a in answers] == [x.text for x in alone]
    blind = records.read_records(world_run / "demo_world" / "answers_blind.jsonl")
    assert len(blind) == 5 and [b["question_id"] for b in blind] == [a["question_id"] for a in answers]
    majority = records.read_records(world_run / "demo_world" / "answers_most_frequent.jsonl")
    scores = json.loads((world_run / "demo_world" / "scores.json").read_text())
    assert set(scores) == {"model", "blind", "most_frequent"}
    # the scores are the scorer's on the written answers, e.g. the baseline's from its own file
    by_hand = sum(m["text"] == a for m, a in zip(majority, [_gold(data_root, q.question_id) for q in expected]))
    assert scores["most_frequent"]["accuracy"] == pytest.approx(100 * by_hand / 5)
    report = (world_run / "report.md").read_text()
    assert "| model: ckpt |" in report and "| blind (image withheld): ckpt |" in report
    assert "| most frequent answer |" in report
    # `mvlm eval score` on the same file gives the same numbers
    assert eval_cli.score_main(["--benchmark", "demo_world", "--answers", str(world_run / "demo_world" / "answers.jsonl"),
                                "--data-root", str(data_root), "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == scores["model"]["accuracy"]


def _gold(data_root, question_id):
    items = json.loads((data_root / "world" / "eval_test.json").read_text())
    return next(i["answer"] for i in items if i["id"] == question_id).strip().rstrip(".").lower()


class CountingAnswerer:
    def __init__(self, inner):
        self.inner, self.asked = inner, 0
        self.model_id, self.fingerprint, self.batch_size = inner.model_id, inner.fingerprint, inner.batch_size

    def answer(self, questions, max_new_tokens, blind):
        self.asked += len(questions)
        return self.inner.answer(questions, max_new_tokens, blind)


def test_a_rerun_continues_after_the_last_written_answer(world_run, ckpt, data_root, tmp_path):
    complete = (world_run / "demo_world" / "answers.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(complete[:2]) + complete[2][:25])  # two answers and a torn third line
    answerer = CountingAnswerer(JaxAnswerer.from_checkpoint(ckpt, batch_size=2))
    done = runner.answer_questions(path, world_questions(data_root)[:5], answerer, 16)
    assert done == answerer.asked == 3
    assert path.read_text() == "".join(complete)
    # a file answering more questions than asked serves the first ones (another --limit): nothing to do
    assert runner.answer_questions(path, world_questions(data_root)[:3], answerer, 16) == 0
    # answers of another model, of other weights at the same path, or of another max_new_tokens never continue
    path.write_text(complete[0].replace(answerer.model_id, "another-model"))
    with pytest.raises(ValueError, match=r"answers.jsonl:1: .*'another-model'"):
        runner.answer_questions(path, world_questions(data_root)[:5], answerer, 16)
    record = json.loads(complete[0])
    record["metadata"]["fingerprint"] = "0" * 16
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="another version of"):
        runner.answer_questions(path, world_questions(data_root)[:5], answerer, 16)
    path.write_text(complete[0])
    with pytest.raises(ValueError, match="max_new_tokens 16, this run uses 8"):
        runner.answer_questions(path, world_questions(data_root)[:5], answerer, 8)


def test_a_later_limit_scores_the_first_questions_of_earlier_runs(world_run, ckpt, data_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(world_run, out)
    before = (out / "demo_world" / "answers.jsonl").read_text()
    assert eval_cli.vlm_main(["--ckpt", str(ckpt), "--benchmark", "demo_world", "--data-root", str(data_root),
                              "--out", str(out), "--limit", "3", "--devices", "1"]) == 0
    assert (out / "demo_world" / "answers.jsonl").read_text() == before  # nothing answered again
    scores = json.loads((out / "demo_world" / "scores.json").read_text())
    assert {run: s["questions"] for run, s in scores.items()} == {"model": 3, "blind": 3, "most_frequent": 3}


def test_the_cache_grows_past_the_trained_context_as_the_official_generate(ckpt, data_root):
    """Answers are not cut at max_position_embeddings (512 here): the cache is sized for prompt + answer."""
    answerer = JaxAnswerer.from_checkpoint(ckpt, batch_size=1)
    question = world_questions(data_root)[:1]
    short = answerer.answer(question, 16, blind=False)[0]
    long = answerer.answer(question, 520, blind=False)[0]
    assert max(answerer.generators) >= 1024 > answerer.config.llm.max_position_embeddings
    assert long.ids[:16] == short.ids and (len(long.ids) == 520 or long.ids[-1:] != [])


def test_processes_and_devices_split_the_work_without_changing_answers(world_run, ckpt, data_root, tmp_path,
                                                                       monkeypatch):
    import numpy as np
    from jax.experimental import multihost_utils

    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: np.zeros(2, np.int32))
    # two "processes", run one after the other here; each answers its contiguous slice, process 0 merges
    answerer = JaxAnswerer.from_checkpoint(ckpt, batch_size=2, devices=jax.devices()[:2])  # rows split over 2 devices
    for index in (1, 0):
        runner.answer_benchmark("demo_world", world_questions(data_root)[:5], tmp_path, answerer, process_index=index,
                                process_count=2)
    merged = (tmp_path / "demo_world" / "answers.jsonl").read_text()
    assert merged == (world_run / "demo_world" / "answers.jsonl").read_text()
    assert not list((tmp_path / "demo_world").glob("*.part-*"))
    assert [len(runner.split_list(list(range(7)), i, 3)) for i in range(3)] == [3, 2, 2]
    # a failed process makes every process fail instead of waiting at the barrier
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: np.asarray([0, 1], np.int32))
    with pytest.raises(RuntimeError, match=r"process\(es\) \[1\] failed"):
        runner.answer_benchmark("demo_world", world_questions(data_root)[:5], tmp_path / "again", answerer,
                                process_index=0, process_count=2)
    # process 0 must see the other processes' parts: --out on a shared filesystem
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: np.zeros(2, np.int32))
    with pytest.raises(FileNotFoundError, match="filesystem that every process shares"):
        runner.answer_benchmark("demo_world", world_questions(data_root)[:5], tmp_path / "unshared", answerer,
                                process_index=0, process_count=2)


def test_two_processes_answer_as_one(world_run, ckpt, data_root, tmp_path):
    """Two real processes (gloo collectives on loopback) each answer their slice; process 0 merges the
    parts in question order: the files equal the one-process run's, byte for byte."""
    from test_multiprocess import free_port

    command = [sys.executable, "-m", "mvlm_jax.cli", "eval", "vlm", "--ckpt", str(ckpt), "--benchmark", "demo_world",
               "--data-root", str(data_root), "--out", str(tmp_path), "--limit", "5", "--batch-size", "2",
               "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    processes = [subprocess.Popen(command + ["--process-id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    for name in ("answers.jsonl", "answers_blind.jsonl"):
        assert (tmp_path / "demo_world" / name).read_text() == (world_run / "demo_world" / name).read_text()
    assert "# Image benchmarks" in outputs[0][0] and "# Image benchmarks" not in outputs[1][0]  # process 0 reports
    assert not list((tmp_path / "demo_world").glob("*.part-*"))


def test_gguf_files_answer_as_the_checkpoint(world_run, gguf_files, data_root, tmp_path):
    llm, mmproj = gguf_files
    out = tmp_path / "out"
    shutil.copytree(world_run, out)
    assert eval_cli.vlm_main(["--gguf", str(llm), "--mmproj", str(mmproj), "--benchmark", "demo_world",
                              "--data-root", str(data_root), "--out", str(out), "--limit", "5"]) == 0
    jax_answers = records.read_records(out / "demo_world" / "answers.jsonl")
    gguf_answers = records.read_records(out / "demo_world" / f"answers_gguf-{llm.stem}.jsonl")
    assert [a["metadata"]["ids"] for a in gguf_answers] == [a["metadata"]["ids"] for a in jax_answers]
    assert [a["text"] for a in gguf_answers] == [a["text"] for a in jax_answers]
    scores = json.loads((out / "demo_world" / "scores.json").read_text())
    assert set(scores) == {"model", "blind", "most_frequent", f"gguf-{llm.stem}"}  # side by side
    assert f"| gguf-{llm.stem}: {llm.stem} |" in (out / "report.md").read_text()


def test_missing_images_are_counted_and_listed(ckpt, data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    first = world_questions(root)[0]
    first.image_path.unlink()
    out = tmp_path / "out"
    assert eval_cli.vlm_main(["--ckpt", str(ckpt), "--benchmark", "demo_world", "--data-root", str(root), "--out",
                              str(out), "--limit", "2", "--no-blind", "--devices", "1"]) == 0
    answers = records.read_records(out / "demo_world" / "answers.jsonl")
    assert answers[0]["text"] == "" and str(first.image_path) in answers[0]["metadata"]["image_error"]
    assert answers[1]["text"] and "image_error" not in answers[1]["metadata"]
    assert json.loads((out / "demo_world" / "scores.json").read_text())["model"]["image_errors"] == 1
    assert str(first.image_path) in (out / "report.md").read_text()


def test_errors_name_the_problem(ckpt, data_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert eval_cli.vlm_main(["--ckpt", str(ckpt), "--benchmark", "demo_world", "--data-root", str(empty),
                              "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert str(empty / "world" / "eval_test.json") in err and "held-out questions" in err
    assert eval_cli.vlm_main(["--ckpt", str(ckpt), "--benchmark", "vqav2", "--data-root", str(data_root),
                              "--out", str(tmp_path / "o")]) == 1
    assert "unknown benchmark 'vqav2'" in capsys.readouterr().err
    llm_only, _ = gguf_helpers.checkpoint(tmp_path / "llm", gguf_helpers.llm_config())
    assert eval_cli.vlm_main(["--ckpt", str(llm_only), "--benchmark", "demo_world", "--data-root", str(data_root),
                              "--out", str(tmp_path / "o")]) == 1
    assert "text-only LLM checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("name", benchmark.PAPER_BENCHMARKS)
def test_each_paper_benchmark_from_question_files_to_scores(name, ckpt, data_root, gguf_files, tmp_path):
    """Every question answered once, in the question file's order, in the official record format, also when
    a run is interrupted and resumed; scored; the report puts the paper's Table 4 beside it. SQA (no pad to square, questions without image) and
    MMBench (base64 images) also run through llama.cpp, token for token as JAX. Answers are cut at 24
    tokens: a random model never stops, and over the official 1024 a near-tie of its flat logits flips
    sooner or later between two float32 runtimes."""
    module = benchmark.module(name)
    command = ["--ckpt", str(ckpt), "--benchmark", name, "--data-root", str(data_root), "--out", str(tmp_path),
               "--batch-size", "4", "--devices", "1", "--no-blind", "--max-new-tokens", "24"]
    assert eval_cli.vlm_main(command) == 0
    path = tmp_path / name / "answers.jsonl"
    answers = records.read_records(path)
    # interrupted after two answers and part of a third: the re-run continues to the same file
    complete = path.read_text().splitlines(keepends=True)
    path.write_text("".join(complete[:2]) + complete[2][:20])
    assert eval_cli.vlm_main(command) == 0
    assert path.read_text() == "".join(complete)
    questions = module.questions(data_root)
    assert [(str(a["question_id"]), a["prompt"]) for a in answers] == [q.key for q in questions]
    assert all(OFFICIAL_KEYS | set(q.record_extra) <= set(a) for a, q in zip(answers, questions))
    scores = json.loads((tmp_path / name / "scores.json").read_text())
    assert all(key in scores["model"] for key in module.SCORE_KEYS)
    report = (tmp_path / "report.md").read_text()
    assert "MobileVLM 1.7B (paper)" in report and f"(max_new_tokens 24, not the official {module.MAX_NEW_TOKENS})" in report
    if name in ("sqa", "mmbench"):
        llm, mmproj = gguf_files
        assert eval_cli.vlm_main(["--gguf", str(llm), "--mmproj", str(mmproj), "--benchmark", name,
                                  "--data-root", str(data_root), "--out", str(tmp_path), "--max-new-tokens", "24",
                                  "--limit", "3"]) == 0  # SQA: one question without image, two with
        theirs = records.read_records(tmp_path / name / f"answers_gguf-{llm.stem}.jsonl")
        assert [a["metadata"]["ids"] for a in theirs] == [a["metadata"]["ids"] for a in answers[:3]]
