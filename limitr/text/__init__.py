"""Report tokenization: tokenizer loading or training, token shards with word ids."""
