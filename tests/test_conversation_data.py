"""SFT and image-text pipelines on the embedded dataset: templates and loss masks, packing that never
lets attention cross conversations (same per-token loss as unpacked), truncation, images, resume."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.conversations import (ConversationData, PackedRows, answer_weights, build_conversation_dataset,
                                         prepare_examples)
from data_pipelines.embedded import generate
from data_pipelines.images import preprocess_file
from data_pipelines.pretrain_pipeline import batch_hash
from data_pipelines.templates import IMAGE_TOKEN, segments_for, tokenize
from data_pipelines.tokenizer import Tokenizer, train_tokenizer
from jit_init import init_params
from mvlm_jax.models import build_model
from mvlm_jax.models.config import LlamaConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    generate(root, seed=0, size="tiny", image_size=48)
    texts = [json.loads(line)["text"] for line in (root / "corpus_train.jsonl").read_text().splitlines()]
    for name in ("sharegpt_train.json", "llava_instruct_train.json"):
        for record in json.loads((root / name).read_text()):
            texts += [turn["value"] for turn in record["conversations"]]
    tokenizer = train_tokenizer(texts + ["USER: ASSISTANT: A chat between a curious user"], 400, root / "tok.model")
    return root, tokenizer


def sft_config(root, tokenizer, **overrides):
    return ConversationData(**{"files": (str(root / "sharegpt_train.json"),), "format": "sharegpt",
                               "template": "vicuna_v1", "tokenizer": str(tokenizer.path), "seq_len": 256,
                               "batch_size": 2, "seed": 1, **overrides})


def test_vicuna_v1_targets_are_the_answers_and_their_eos(world):
    _, tokenizer = world
    turns = [{"from": "human", "value": "what is two plus two?"}, {"from": "gpt", "value": "four"},
             {"from": "human", "value": "and three plus one?"}, {"from": "gpt", "value": "also four"}]
    tokenized = tokenize(tokenizer, segments_for("vicuna_v1", turns, has_image=False))
    ids, target = tokenized.ids, tokenized.target
    assert ids[0] == tokenizer.bos_id and not target[0]
    assert list(ids[target]).count(tokenizer.eos_id) == 2 and ids[-1] == tokenizer.eos_id and target[-1]
    answer_text = tokenizer.decode([i for i in ids[target] if i != tokenizer.eos_id])
    assert answer_text == "four also four"
    prompt_text = tokenizer.decode(ids[~target])
    assert prompt_text.startswith("A chat between a curious user") and prompt_text.count("ASSISTANT:") == 2
    assert tokenizer.decode(ids).endswith("ASSISTANT: also four")


def test_plain_template_targets_caption_and_newline(world):
    _, tokenizer = world
    turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a red circle"}]
    tokenized = tokenize(tokenizer, segments_for("plain", turns, has_image=True))
    assert list(tokenized.ids[:2]) == [tokenizer.bos_id, IMAGE_TOKEN] and not tokenized.target[:2].any()
    assert tokenized.target[2:].all() and tokenizer.piece(tokenized.ids[-1]) == "<0x0A>"
    assert tokenizer.decode(tokenized.ids[2:]) == "a red circle\n"


def test_answer_weights_give_each_answer_len_to_the_minus_power(world):
    """answer_weight_power p: each answer's target tokens (its words and the end token) weigh len ** -p,
    so with p = 1 every answer of a packed row sums to 1; p = 0 is the plain target mask."""
    target = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 1], bool)
    np.testing.assert_allclose(answer_weights(target, 1.0), [0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 1, 0, 0.5, 0.5])
    np.testing.assert_allclose(answer_weights(target, 0.5)[1:4], [3 ** -0.5] * 3)
    np.testing.assert_array_equal(answer_weights(target, 0.0), target.astype(np.float32))
    root, tokenizer = world
    plain, weighted = (PackedRows(config, prepare_examples(config, tokenizer))
                       for config in (sft_config(root, tokenizer, answer_weight_power=p) for p in (0.0, 1.0)))
    for row in range(4):
        mask, weights = plain[row]["loss_mask"], weighted[row]["loss_mask"]
        answers = int(np.sum(np.diff(np.concatenate([[0], mask, [0]])) == 1))
        assert answers >= 1 and np.isclose(weights.sum(), answers) and np.array_equal(weights > 0, mask > 0)


def per_token_losses(params, model, batch):
    logits = model.apply({"params": params}, jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"]),
                         jnp.asarray(batch["positions"]))
    logp = jax.nn.log_softmax(logits, -1)
    return -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]


def test_packed_loss_per_answer_token_equals_unpacked(world):
    root, tokenizer = world
    packed_cfg = sft_config(root, tokenizer, seq_len=1024, batch_size=1)
    examples = prepare_examples(packed_cfg, Tokenizer(tokenizer.path))
    packed_rows = PackedRows(packed_cfg, examples)
    row = next(r for r in range(50) if len(packed_rows.locate(r)) >= 3)
    packed = {k: v[None] for k, v in packed_rows[row].items()}
    assert packed["segment_ids"].max() >= 3

    model_config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=64)
    model, params = build_model(model_config), init_params(model_config, jax.random.key(0))
    packed_losses = per_token_losses(params, model, packed)[0][packed["loss_mask"][0] > 0]

    single_cfg = dataclasses.replace(packed_cfg, pack=False)
    single_rows = PackedRows(single_cfg, examples)
    alone = []
    for index in packed_rows.locate(row):
        position = next(r for r in range(len(examples)) if single_rows.locate(r)[0] == index)
        single = {k: v[None] for k, v in single_rows[position].items()}
        alone.append(per_token_losses(params, model, single)[0][single["loss_mask"][0] > 0])
    np.testing.assert_allclose(packed_losses, np.concatenate(alone), atol=1e-5)


def test_truncation_rule_and_too_long_is_counted(world, tmp_path, capsys):
    root, tokenizer = world
    long_answer = " ".join(["blue"] * 400)
    records = [{"conversations": [{"from": "human", "value": "say blue"}, {"from": "gpt", "value": long_answer}]},
               {"image": "train/000068.png",
                "conversations": [{"from": "human", "value": "<image>\n" + " ".join(["why"] * 400)},
                                  {"from": "gpt", "value": "because"}]}]
    (tmp_path / "long.json").write_text(json.dumps(records))
    cfg = ConversationData(files=(str(tmp_path / "long.json"),), format="llava", tokenizer=str(tokenizer.path),
                           seq_len=200, batch_size=1, image_root=str(root / "images"), image_size=48,
                           num_visual_tokens=9)
    examples = prepare_examples(cfg, Tokenizer(tokenizer.path))
    assert len(examples) == 1 and len(examples.ids[0]) == 201  # the long answer is cut to seq_len inputs
    assert examples.target[0][-1] and not examples.target[0][:10].any()
    assert examples.report.counts == {"too_long": 1}  # its question fills the row: no answer would remain
    assert examples.truncated == 1 and "truncated 1 of 1 kept record(s) to seq_len 200" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no usable examples"):
        prepare_examples(dataclasses.replace(cfg, truncate=False), Tokenizer(tokenizer.path))


def test_image_text_rows_hold_images_at_their_slots_and_mix_text_only(world):
    root, tokenizer = world
    cfg = ConversationData(files=(str(root / "llava_instruct_train.json"),), format="llava", template="vicuna_v1",
                           tokenizer=str(tokenizer.path), seq_len=320, batch_size=2, image_root=str(root / "images"),
                           image_size=48, num_visual_tokens=9, images_per_row=2, seed=0)
    examples = prepare_examples(cfg, Tokenizer(tokenizer.path))
    rows = PackedRows(cfg, examples)
    seen_two_images = seen_text_only = False
    for r in range(30):
        row, members = rows[r], rows.locate(r)
        images = [examples.images[i] for i in members if examples.images[i] is not None]
        assert row["images"].shape == (2, 48, 48, 3)
        for k, name in enumerate(images):
            slot = row["image_slots"][k]
            assert (row["tokens"][slot:slot + 9] == 0).all() and not row["loss_mask"][slot - 1:slot + 9].any()
            np.testing.assert_array_equal(row["images"][k], preprocess_file(root / "images" / name, 48, pad=True))
        assert (row["image_slots"][len(images):] == -1).all() and not row["images"][len(images):].any()
        seen_two_images |= len(images) == 2
        seen_text_only |= any(examples.images[i] is None for i in members)
    assert seen_two_images and seen_text_only


def test_conversation_stream_resumes_exactly_and_reshuffles_per_epoch(world):
    root, tokenizer = world
    cfg = sft_config(root, tokenizer, batch_size=2)
    reference = [batch_hash(next(s)) for s in [build_conversation_dataset(cfg)] for _ in range(12)]
    stream = build_conversation_dataset(cfg)
    for _ in range(5):
        next(stream)
    resumed = build_conversation_dataset(cfg)
    resumed.set_state(stream.get_state())
    assert [batch_hash(next(resumed)) for _ in range(7)] == reference[5:]
    rows = PackedRows(cfg, prepare_examples(cfg, Tokenizer(tokenizer.path)))
    first, second = rows._epoch_rows(0), rows._epoch_rows(1)
    assert sorted(np.concatenate(first)) == sorted(np.concatenate(second))
    assert [list(r) for r in first] != [list(r) for r in second]


def test_check_cli_reports_exactly_what_the_pipeline_skips(world, capsys):
    from data_pipelines.check import main as check_main
    root, tokenizer = world
    args = ["--format", "sharegpt", "--input", str(root / "sharegpt_train.json"), "--tokenizer", str(tokenizer.path),
            "--template", "vicuna_v1", "--seq-len", "160"]
    lengths = [l for l in prepare_examples(sft_config(root, tokenizer, seq_len=4096), Tokenizer(tokenizer.path)).lengths]
    for extra, truncate in (([], True), (["--no-truncate"], False)):
        capsys.readouterr()  # drop the pipeline's own report printed above
        code = check_main(args + extra)
        lines = [l for l in capsys.readouterr().err.splitlines() if ": too_long: " in l]
        try:
            skipped = prepare_examples(sft_config(root, tokenizer, seq_len=160, truncate=truncate),
                                       Tokenizer(tokenizer.path)).report.counts.get("too_long", 0)
        except ValueError:  # nothing left at all
            skipped = len(lengths)
        assert len(lines) == skipped and code == (1 if skipped else 0)
        assert not lines or lines[0].startswith(f"{root / 'sharegpt_train.json'}:")
    assert sum(length > 160 for length in lengths) > 0  # the case is exercised


def test_truncation_rule_keeps_images_whole():
    from data_pipelines.conversations import fit
    ids = np.array([1, 5, IMAGE_TOKEN, 6, 7, 8, 9, 10, 11], np.int32)  # widened with 4 slots: 12 ids, 11 inputs
    target = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert fit(ids, target, 11, 4)[0] is ids  # fits as is
    kept = fit(ids, target, 9, 4)  # cut after text: image whole, a target remains
    assert list(kept[0]) == [1, 5, IMAGE_TOKEN, 6, 7, 8, 9] and kept[1][-1]
    assert fit(ids, target, 4, 4) is None  # the cut would fall inside the image slots
    assert fit(ids, target, 6, 4) is None  # image whole but no target left
    assert fit(ids, target, 9, 4, truncate=False) is None


# LLaVA llava/conversation.py (conv_llava_llama_2, SeparatorStyle.LLAMA_2, sep "<s>", sep2 "</s>"), the same
# in MobileVLM mobilevlm/conversation.py: get_prompt() wraps the system prompt in <<SYS>> inside the first
# [INST] only, joins rounds with "<s>" (lstrip'ed at the start) and ends each answer with " </s>"; the
# training preprocessing (preprocess_multimodal) moves "<image>" to the front of the first question + "\n".
LLAMA_2_TURNS = [{"from": "human", "value": "What is in the picture?\n<image>"}, {"from": "gpt", "value": "A red circle."},
                 {"from": "human", "value": "Is it big?"}, {"from": "gpt", "value": "No, it is small."}]
LLAMA_2_PROMPT = (
    "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language.\n<</SYS>>\n\n"
    "<image>\nWhat is in the picture? [/INST] A red circle. </s><s>[INST] Is it big? [/INST] No, it is small. </s>")


def official_llama_2_targets(tokenizer, text):
    """LLaVA / MobileVLM train.py preprocess_llama_2 on top of tokenizer_image_token and a legacy HF
    LlamaTokenizer (specials split out, each chunk SentencePiece-encoded alone, BOS per call): rounds split
    at "</s>", each round's instruction (up to "[/INST] ") masked with its token count - 2."""
    import re

    def encode(piece_text, bos=True):
        special = {"</s>": tokenizer.eos_id, "<s>": tokenizer.bos_id, "<image>": IMAGE_TOKEN}
        ids = [tokenizer.bos_id] if bos else []
        for chunk in re.split(r"(</s>|<s>|<image>)", piece_text):
            ids += [special[chunk]] if chunk in special else tokenizer.encode(chunk) if chunk else []
        return ids

    ids = encode(text)
    target, cur = np.ones(len(ids), bool), 1
    target[0] = False
    for round_text in text.split("</s>"):
        parts = round_text.split("[/INST] ")
        if not round_text or len(parts) != 2:
            break
        instruction_len = len(encode(parts[0] + "[/INST] ")) - 2
        target[cur:cur + instruction_len] = False
        cur += len(encode(round_text))
    assert cur == len(ids)  # the official "tokenization mismatch" check
    return np.asarray(ids), target


@pytest.mark.parametrize("has_image", [True, False])
def test_llava_llama_2_prompt_and_targets_match_the_official_code(world, has_image):
    _, tokenizer = world
    turns = LLAMA_2_TURNS if has_image else [dict(t, value=t["value"].replace("\n<image>", "")) for t in LLAMA_2_TURNS]
    segments = segments_for("llava_llama_2", turns, has_image=has_image)
    text = "".join(s.text for s in segments)
    assert text == (LLAMA_2_PROMPT if has_image else LLAMA_2_PROMPT.replace("<image>\n", ""))
    tokenized = tokenize(tokenizer, segments)
    ids, target = official_llama_2_targets(tokenizer, text)
    np.testing.assert_array_equal(tokenized.ids, ids)
    np.testing.assert_array_equal(tokenized.target, target)
    # the targets: both answers with their trailing "▁" piece and </s>; the second round's <s> is masked
    assert list(tokenized.ids[tokenized.target]).count(tokenizer.eos_id) == 2 and tokenized.target[-1]
    answers = tokenizer.decode(tokenized.ids[tokenized.target & (tokenized.ids != tokenizer.eos_id)])
    assert answers == "A red circle.  No, it is small. "  # each answer's trailing "▁", then the next one's
    bos = tokenized.ids == tokenizer.bos_id
    assert bos.sum() == 2 and not tokenized.target[bos].any()
    assert tokenized.num_images == int(has_image)


def test_llava_llama_2_generation_prompt_ends_at_the_answer(world):
    from mvlm_jax.generate.prompts import build_prompt, prompt_text

    _, tokenizer = world
    text = prompt_text(LLAMA_2_TURNS[:3], "llava_llama_2", has_image=True)
    assert text == LLAMA_2_PROMPT[:LLAMA_2_PROMPT.index("Is it big? [/INST]") + len("Is it big? [/INST]")]
    ids = build_prompt(tokenizer, "Is it big?", "llava_llama_2", has_image=True)
    assert ids[0] == tokenizer.bos_id and list(ids).count(IMAGE_TOKEN) == 1
    assert tokenizer.decode(ids[ids >= 0]).endswith("\nIs it big? [/INST]")
    with pytest.raises(ValueError, match="a training conversation must end with an answer"):
        segments_for("llava_llama_2", LLAMA_2_TURNS[:1], has_image=False)


def test_rows_read_from_many_threads_map_to_the_examples_of_one_reader(world):
    """grain reads rows from several threads; threads that reach new epochs together must see the same
    row -> examples map as one reader (a race here changed a demo's stage 2 at its second epoch)."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    root, tokenizer = world
    cfg = sft_config(root, tokenizer, batch_size=2)
    examples = prepare_examples(cfg, Tokenizer(tokenizer.path))
    reference = PackedRows(cfg, examples)
    wanted = range(0, reference.epoch_rows(6), 7)
    expected = [list(reference.locate(row)) for row in wanted]
    for _ in range(5):
        rows = PackedRows(cfg, examples)
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda row: list(rows.locate(row)), wanted))
        assert got == expected
    copy = pickle.loads(pickle.dumps(reference))  # what grain sends to worker processes
    assert [list(copy.locate(row)) for row in wanted] == expected
