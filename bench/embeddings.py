"""Embedding throughput: leads embedded per second by each embedder, on the same generated leads.

The semantic embedder (all-MiniLM-L6-v2 on the CPU, batches of 64) is measured
when its extra is installed; the hashing embedder (the fallback) always.  The
peer is sentence-transformers' own ``encode`` on the same texts and batch
size, so the figure shows what our wrapper costs.  Model loading is timed
apart and not counted.  Prints ``embed_leads_per_s_<kind>=`` last.

    python bench/embeddings.py [--leads N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import time  # noqa: E402

from agent.embeddings import HashingEmbedder, SemanticEmbedder, lead_text, semantic_available  # noqa: E402
from agent.leads.sample import generate_leads  # noqa: E402
from bench.common import cpu_reference  # noqa: E402


def lead_texts(count: int) -> list[str]:
    rows = generate_leads(count)
    return [lead_text({"title": r.get("title"), "company": r.get("company"), "industry": r.get("industry"),
                       "company_size": r.get("size"), "location": r.get("location")}) for r in rows]


def rate(fn, texts: list[str]) -> float:  # type: ignore[no-untyped-def]
    fn(texts[:64])  # warm
    started = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=5000)
    args = parser.parse_args()
    print(f"cpu_ref={cpu_reference()} s  leads={args.leads}")
    texts = lead_texts(args.leads)
    figures = {"hashing": rate(HashingEmbedder().embed, texts)}
    print(f"hashing-v1       : {figures['hashing']:>9,.0f} leads/s")
    if semantic_available():
        semantic = SemanticEmbedder()
        started = time.perf_counter()
        semantic.embed(["warm up"])
        print(f"all-MiniLM-L6-v2 : model loaded in {time.perf_counter() - started:.1f} s")
        figures["semantic"] = rate(semantic.embed, texts)
        model = semantic._load()
        peer = rate(lambda t: model.encode(t, batch_size=64, normalize_embeddings=True, show_progress_bar=False),
                    texts)
        print(f"all-MiniLM-L6-v2 : {figures['semantic']:>9,.0f} leads/s   "
              f"(sentence-transformers encode alone: {peer:,.0f} leads/s, ours/peer {figures['semantic'] / peer:.2f})")
    else:
        print("all-MiniLM-L6-v2 : not installed (extra `semantic`)")
    print(" ".join(f"embed_leads_per_s_{kind}={value:.0f}" for kind, value in figures.items()))


if __name__ == "__main__":
    main()
