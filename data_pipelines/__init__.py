"""Data pipelines: tokenizer, token shards, grain pipelines (text, SFT, image-text) and the embedded dataset."""
