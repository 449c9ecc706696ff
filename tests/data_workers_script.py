"""Run by test_data_resume.py in a fresh interpreter: grain worker processes need a __main__ guard and
absl flags marked parsed. Prints one JSON line of batch hashes."""
import json
import sys

from absl import flags

from data_pipelines.pretrain_pipeline import PretrainData, batch_hash, build_pretrain_dataset
from data_pipelines.stream import ReadOptions


def main() -> None:
    flags.FLAGS.mark_as_parsed()
    shards, workers, stop_at, resume_workers, steps = sys.argv[1], *map(int, sys.argv[2:6])
    config = PretrainData(sources=((shards, 1.0),), seq_len=32, batch_size=4, seed=3,
                          read=ReadOptions(worker_count=workers))
    stream = build_pretrain_dataset(config)
    first = [batch_hash(next(stream)) for _ in range(stop_at)]
    state = stream.get_state()
    stream.close()
    resumed = build_pretrain_dataset(PretrainData(**{**config.__dict__, "read": ReadOptions(worker_count=resume_workers)}))
    resumed.set_state(state)
    rest = [batch_hash(next(resumed)) for _ in range(steps - stop_at)]
    resumed.close()
    print(json.dumps(first + rest))


if __name__ == "__main__":
    main()
