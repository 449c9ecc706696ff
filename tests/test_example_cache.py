"""The example cache: conversation data is tokenized once; a later start reads the same examples from
memory-mapped files (same rows, same batches), grain workers receive the cache path instead of the arrays,
and any change to what decides the examples is a new cache entry."""
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.conversations import (CachedExamples, ConversationData, PackedRows, build_conversation_dataset,
                                          prepare_examples)
from data_pipelines.embedded import generate
from data_pipelines.pretrain_pipeline import batch_hash
from data_pipelines.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    generate(root, seed=0, size="tiny", image_size=48)
    texts = []
    for record in json.loads((root / "llava_instruct_train.json").read_text()):
        texts += [turn["value"] for turn in record["conversations"]]
    tokenizer = train_tokenizer(texts + ["USER: ASSISTANT: A chat between a curious user"], 400, root / "tok.model")
    return ConversationData(files=(str(root / "llava_instruct_train.json"),), format="llava", template="vicuna_v1",
                            tokenizer=str(tokenizer.path), seq_len=200, batch_size=2, image_root=str(root / "images"),
                            image_size=48, num_visual_tokens=9, images_per_row=2, cache_dir=str(root / "examples"))


def test_a_second_start_reads_the_same_examples_from_the_cache(data, capsys):
    tokenizer = Tokenizer(data.tokenizer)
    plain = prepare_examples(dataclasses.replace(data, cache=False), tokenizer)
    first = prepare_examples(data, tokenizer)
    assert "from the cache" not in capsys.readouterr().err
    second = prepare_examples(data, tokenizer)
    err = capsys.readouterr().err
    assert "from the cache" in err and isinstance(second, CachedExamples)
    assert plain.truncated > 0 and f"truncated {plain.truncated} of {len(plain)}" in err  # reported again
    for examples in (first, second):
        assert len(examples) == len(plain) and examples.truncated == plain.truncated
        assert examples.report.counts == plain.report.counts
        assert list(examples.lengths) == plain.lengths and list(examples.has_image) == list(plain.has_image)
        for i in range(len(plain)):
            np.testing.assert_array_equal(examples.ids[i], plain.ids[i])
            np.testing.assert_array_equal(examples.target[i], plain.target[i])
            assert examples.images[i] == plain.images[i]
    # The same rows and batches as without the cache.
    rows = [PackedRows(data, examples) for examples in (plain, second)]
    for r in range(10):
        assert rows[0].locate(r).tolist() == rows[1].locate(r).tolist()
        for key, value in rows[0][r].items():
            np.testing.assert_array_equal(value, rows[1][r][key])
    streams = [build_conversation_dataset(data, examples=examples) for examples in (plain, second)]
    assert [batch_hash(next(streams[0])) for _ in range(3)] == [batch_hash(next(streams[1])) for _ in range(3)]

    # Workers get the path, not the arrays.
    assert len(pickle.dumps(second)) < 1000
    again = pickle.loads(pickle.dumps(second))
    np.testing.assert_array_equal(again.ids[3], second.ids[3])


def test_what_decides_the_examples_is_in_the_key(data, tmp_path):
    tokenizer = Tokenizer(data.tokenizer)
    prepare_examples(data, tokenizer)
    before = {p.name for p in Path(data.cache_dir).iterdir()}
    prepare_examples(dataclasses.replace(data, seq_len=180), tokenizer)
    changed = tmp_path / "changed.json"  # one answer longer: new content, a new entry
    records = json.loads(Path(data.files[0]).read_text())
    records[0]["conversations"][1]["value"] += " indeed"
    changed.write_text(json.dumps(records))
    edited = prepare_examples(dataclasses.replace(data, files=(str(changed),)), tokenizer)
    after = {p.name for p in Path(data.cache_dir).iterdir()}
    assert len(after - before) == 2 and not any(name.startswith(".") for name in after)  # no partial left
    assert not np.array_equal(edited.ids[0], prepare_examples(data, tokenizer).ids[0])
