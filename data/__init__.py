"""Users' datasets: sources, offline tokenization into indexed token shards, packing, the loader."""
