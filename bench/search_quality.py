"""Search and scoring quality on the labelled evaluation set (``bench/eval``).

Imports the set's 3,000 leads into a fresh SQLite store, then for each query
asks the ``LeadOrchestrator`` for ten leads three ways (``search``: lexical,
semantic, hybrid) and reports recall@10: the share of the query's relevant
leads among the ten, out of at most ten.  The peer is lexical search, which
hybrid must beat.  Then scores every lead against the set's ICP and reports
precision and recall of "score >= threshold" against the known fits.

Runs with the semantic embedder when its extra is installed, and always with
the hashing fallback.  Prints ``recall10_<embedder>_<mode>=`` lines last.

    python bench/search_quality.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from agent.embeddings import embedder_for, semantic_available  # noqa: E402
from agent.high_level_agents.orchestrators import LeadOrchestrator  # noqa: E402
from agent.leads.importer import import_csv  # noqa: E402
from agent.scoring.icp import parse_icp, score_leads  # noqa: E402
from agent.settings import get_settings  # noqa: E402
from agent.storage.db import Database  # noqa: E402
from agent.vectors import lead_vectors  # noqa: E402
from bench.common import cpu_reference  # noqa: E402

EVAL = Path(__file__).resolve().parent / "eval"
# "lexical": free text parsed into filters plus full text (every word); "keywords": ranked BM25 over
# any word (the lexical half of hybrid); "semantic": embeddings; "hybrid": keywords and semantic fused.
MODES = {"lexical": {"search": "lexical"}, "keywords": {"search": "lexical", "keywords": True},
         "semantic": {"search": "semantic"}, "hybrid": {"search": "hybrid"}}


def recall_at_10(found: list[str], relevant: set[str]) -> float:
    return len(set(found[:10]) & relevant) / min(10, len(relevant))


def evaluate(embedder_name: str, labels: dict) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="agent-eval-"))
    try:
        settings = get_settings(home=home, database_url=f"sqlite:///{home / 'eval.db'}", sample_data="off",
                                embedder=embedder_name)
        db = Database.for_settings(settings)
        import_csv(EVAL / "leads.csv", db)
        embedder = embedder_for(settings)
        lead_vectors(db, settings.tenant, embedder).sync()
        orch = LeadOrchestrator(settings=settings)
        figures: dict[str, float] = {}
        for mode, options in MODES.items():
            recalls = []
            for query in labels["queries"]:
                env = orch.run({"lead_query": {"text": query["text"], "limit": 10, **options}})
                recalls.append(recall_at_10([r["email"] for r in env["records"]], set(query["relevant"])))
            figures[mode] = statistics.fmean(recalls)
        icp = parse_icp(labels["icp"])
        rows = _all_leads(db, settings.tenant)
        scores = score_leads(icp, rows, embedder=embedder)
        fit = set(labels["icp_fit"])
        for threshold in sorted({60, 65, icp.threshold, 75, 80}):
            predicted = {row["email"] for row, score in zip(rows, scores) if score.score >= threshold}
            hits = len(predicted & fit)
            figures[f"icp_precision@{threshold}"] = hits / len(predicted) if predicted else 0.0
            figures[f"icp_recall@{threshold}"] = hits / len(fit)
            figures[f"icp_predicted@{threshold}"] = len(predicted)
        figures["icp_precision"] = figures[f"icp_precision@{icp.threshold}"]
        figures["icp_recall"] = figures[f"icp_recall@{icp.threshold}"]
        figures["icp_predicted"] = figures[f"icp_predicted@{icp.threshold}"]
        return figures
    finally:
        Database.forget_all()
        shutil.rmtree(home, ignore_errors=True)


def _all_leads(db: Database, tenant: str) -> list[dict]:
    from agent.leads.search import LeadSearch
    from agent.storage.models import Contact
    from sqlalchemy import select

    search = LeadSearch(db, tenant=tenant)
    with db.connect() as conn:
        ids = list(conn.execute(select(Contact.id).where(Contact.tenant_id == tenant).order_by(Contact.id)).scalars())
        return search.load(conn, ids)


def main() -> None:
    labels = json.loads((EVAL / "labels.json").read_text(encoding="utf-8"))
    print(f"cpu_ref={cpu_reference()} s  queries={len(labels['queries'])}  icp_fits={len(labels['icp_fit'])}")
    embedders = (["semantic"] if semantic_available() else []) + ["hashing"]
    results = {}
    for name in embedders:
        figures = results[name] = evaluate(name, labels)
        print(f"{name:9}: recall@10 lexical {figures['lexical']:.3f}  keywords {figures['keywords']:.3f}  "
              f"semantic {figures['semantic']:.3f}  hybrid {figures['hybrid']:.3f}   ICP at threshold {labels['icp']['threshold']}: precision "
              f"{figures['icp_precision']:.3f} recall {figures['icp_recall']:.3f} "
              f"({figures['icp_predicted']:.0f} predicted)")
    for name, figures in results.items():
        sweep = "  ".join(f"{key.split('@')[1]}: P {figures[key]:.2f} R {figures[key.replace('precision', 'recall')]:.2f}"
                          for key in figures if key.startswith("icp_precision@"))
        print(f"{name}: ICP precision/recall by threshold  {sweep}")
    for name, figures in results.items():
        for peer in ("lexical", "keywords"):
            verdict = "beats" if figures["hybrid"] > figures[peer] else "DOES NOT beat"
            print(f"{name}: hybrid {verdict} {peer} on recall@10 ({figures['hybrid']:.3f} vs {figures[peer]:.3f})")
    for name, figures in results.items():
        for mode in MODES:
            print(f"recall10_{name}_{mode}={figures[mode]:.3f}")


if __name__ == "__main__":
    main()
