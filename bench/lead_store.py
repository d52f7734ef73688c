"""Benchmark of the lead store: CSV import throughput and fuzzy company lookup latency.

Run:  .venv/bin/python bench/lead_store.py [--leads 100000] [--queries 500] [--repeat 3] [--db-url URL]

The first import is measured ``--repeat`` times, each into a fresh database with
cold per-process caches, and judged on the median (the machine is noisy).  The
re-import and the lookups then run against the last of those databases.  A
named peer, a naive per-row SQLAlchemy ORM importer, imports the first
10,000 rows of the same CSV into a database of its own.

Without ``--db-url`` every database is a SQLite file in a fresh temporary
directory (the embedded default), removed afterwards.  With ``--db-url`` each
"fresh database" is a fresh tenant name in that database, which is left in place.

Output: one header line describing the machine, then one ``key=value`` figure
per line, then one ``PASS``/``FAIL`` line per target.  The exit status is
always 0: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Allow `python bench/lead_store.py` from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from email_validator import EmailNotValidError, validate_email  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from agent.leads import normalize
from bench.common import cpu_reference  # noqa: E402
from agent.leads import rows as rows_module  # noqa: E402
from agent.leads.importer import import_csv  # noqa: E402
from agent.leads.query import LeadQuery  # noqa: E402
from agent.leads.sample import generate_leads  # noqa: E402
from agent.leads.search import LeadSearch  # noqa: E402
from agent.settings import get_settings  # noqa: E402
from agent.storage.db import Database  # noqa: E402
from agent.storage.fulltext import index_new_contacts, max_contact_id  # noqa: E402
from agent.storage.models import Company, Contact  # noqa: E402

SEED = 7
QUERY_SEED = 20240601
WARMUP = 5
TYPO_SHARE = 0.4  # share of lookups whose company name carries one typo

PHASE_BUDGET_S = 120.0  # a latency phase stops early past this, to bound the run time
REPEAT = 5  # first imports per run: the machine is noisy, the median is judged
NAIVE_ORM_ROWS = 10_000  # rows the naive ORM peer imports (it is slow)
TARGET_IMPORT_ROWS_S = 20_000.0
TARGET_P50_MS = 5.0
TARGET_P99_MS = 20.0

# The naive peer: plain SQL substring match, same page size, rows joined to their company.
# SQLite's LIKE ignores ASCII case; on PostgreSQL the statement is switched to ILIKE.
NAIVE_SQL = text(
    "SELECT c.id, c.email, c.first_name, c.last_name, c.title, c.phone, c.location, c.status, "
    "co.id AS company_id, co.name AS company, co.domain, co.industry, co.size, co.location AS company_location "
    "FROM contacts AS c JOIN companies AS co ON c.company_id = co.id "
    "WHERE c.tenant_id = :tenant AND co.name LIKE :pattern "
    "ORDER BY c.id LIMIT :limit"
)
NAIVE_SQL_PG = text(str(NAIVE_SQL).replace(" LIKE ", " ILIKE "))


def emit(key: str, value: Any) -> None:
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{key}={value}", flush=True)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-pct * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def typo(name: str, rng: random.Random) -> str:
    """One character dropped, or two neighbours swapped, inside the first word."""
    word_end = name.find(" ")
    word_end = len(name) if word_end < 0 else word_end
    if word_end < 3:
        return name
    i = rng.randrange(1, word_end - 1)
    if rng.random() < 0.5:
        return name[:i] + name[i + 1:]
    return name[:i] + name[i + 1] + name[i] + name[i + 2:]


def make_lookups(rows: list[dict[str, Any]], count: int) -> list[tuple[str, str, bool]]:
    """(query name, true company name, has typo), drawn deterministically from the data."""
    rng = random.Random(QUERY_SEED)
    companies = sorted({r["company"] for r in rows})
    lookups = []
    for _ in range(count):
        name = rng.choice(companies)
        if rng.random() < TYPO_SHARE:
            mangled = typo(name, rng)
            lookups.append((mangled, name, mangled != name))
        else:
            lookups.append((name, name, False))
    return lookups


def cold_start() -> None:
    """Drop every per-process cache a run could inherit from the one before."""
    Database.forget_all()
    normalize.normalize_company_name.cache_clear()
    normalize.registrable_domain.cache_clear()
    normalize._checked_domain.cache_clear()
    rows_module._clean_field.cache_clear()
    gc.collect()
    os.sync()  # the previous run's dirty pages reach the disk now, not during the next timing


def open_db(home: Path, db_url: str | None) -> Database:
    url = db_url or f"sqlite:///{home}/bench.db"
    return Database.for_settings(get_settings(home=home, sample_data="off", database_url=url))


def bench_first_import(csv_path: Path, db: Database, tenant: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.perf_counter()
    first = import_csv(csv_path, db, tenant=tenant)
    elapsed = time.perf_counter() - started
    out["import1_s"] = elapsed
    out["import1_rows_s"] = n / elapsed
    out["import1_inserted"] = first.inserted
    out["import1_updated"] = first.updated
    out["import1_unchanged"] = first.unchanged
    out["import1_rejected"] = len(first.rejected)
    out["import1_companies_inserted"] = first.companies_inserted
    return out


def bench_reimport(csv_path: Path, db: Database, tenant: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.perf_counter()
    second = import_csv(csv_path, db, tenant=tenant)
    elapsed = time.perf_counter() - started
    out["import2_s"] = elapsed
    out["import2_rows_s"] = n / elapsed
    out["import2_inserted"] = second.inserted
    out["import2_updated"] = second.updated
    out["import2_unchanged"] = second.unchanged
    out["import2_rejected"] = len(second.rejected)
    out["import2_all_unchanged"] = second.unchanged == n and not (second.inserted or second.updated)
    return out


def naive_orm_import(csv_path: Path, db: Database, tenant: str, limit: int) -> dict[str, Any]:
    """The peer: CSV import as most code would write it, with the SQLAlchemy ORM.

    ``csv.DictReader``, ``validate_email`` on every row, a query per row to find
    the company by domain, ``session.add`` per row and one commit at the end.
    New contacts are put in the full-text index in the same transaction, as
    every writer of contacts must, so the database stays consistent.
    """
    rows = inserted = rejected = companies = 0
    started = time.perf_counter()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        session = db.sessions()
        try:
            after_id = max_contact_id(session.connection())
            for row in csv.DictReader(fh):
                if rows >= limit:
                    break
                rows += 1
                try:
                    email = validate_email(row["email"], check_deliverability=False).normalized.lower()
                except EmailNotValidError:
                    rejected += 1
                    continue
                domain = (row.get("domain") or email.rsplit("@", 1)[1]).strip().lower()
                company = session.execute(
                    select(Company).where(Company.tenant_id == tenant, Company.domain == domain)
                ).scalar_one_or_none()
                if company is None:
                    now = datetime.now(UTC)
                    company = Company(
                        tenant_id=tenant, name=row["company"],
                        normalized_name=normalize.normalize_company_name(row["company"]),
                        domain=domain, industry=row.get("industry") or None, size=row.get("size") or None,
                        location=row.get("company_location") or None, created_at=now, updated_at=now,
                    )
                    session.add(company)
                    session.flush()  # its id, for the contact
                    companies += 1
                now = datetime.now(UTC)
                session.add(Contact(
                    tenant_id=tenant, email=email, company_id=company.id,
                    first_name=row.get("first_name") or None, last_name=row.get("last_name") or None,
                    title=row.get("title") or None, phone=row.get("phone") or None,
                    location=row.get("location") or None, status="new",
                    source=row.get("source") or None, lawful_basis=row.get("lawful_basis") or None,
                    consent_source=row.get("consent_source") or None,
                    search_text="", created_at=now, updated_at=now,
                ))
                inserted += 1
            session.flush()
            index_new_contacts(session.connection(), after_id)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
    elapsed = time.perf_counter() - started
    return {
        "naive_orm_import_rows": rows,
        "naive_orm_import_s": elapsed,
        "naive_orm_import_rows_s": rows / elapsed,
        "naive_orm_import_inserted": inserted,
        "naive_orm_import_rejected": rejected,
        "naive_orm_import_companies_inserted": companies,
    }


def bench_fuzzy(db: Database, tenant: str, lookups: list[tuple[str, str, bool]], budget_s: float,
                prefix: str = "fuzzy") -> dict[str, Any]:
    search = LeadSearch(db, tenant=tenant)
    out: dict[str, Any] = {}
    # The first lookup loads the in-process company name index: report it apart.
    started = time.perf_counter()
    search.search(LeadQuery(company=lookups[0][0], limit=25))
    out["cold_first_ms"] = (time.perf_counter() - started) * 1000
    for name, _, _ in lookups[1 : 1 + WARMUP]:
        search.search(LeadQuery(company=name, limit=25))

    times: list[float] = []
    found = found_typo = n_typo = 0
    totals = 0
    phase_start = time.perf_counter()
    for name, truth, has_typo in lookups:
        if time.perf_counter() - phase_start > budget_s:
            break
        started = time.perf_counter()
        result = search.search(LeadQuery(company=name, limit=25))
        times.append((time.perf_counter() - started) * 1000)
        hit = any(r["company"] == truth for r in result.rows)
        found += hit
        totals += result.total
        if has_typo:
            n_typo += 1
            found_typo += hit
    times.sort()
    out["queries_timed"] = len(times)
    out["budget_hit"] = len(times) < len(lookups)
    out["p50_ms"] = percentile(times, 50)
    out["p95_ms"] = percentile(times, 95)
    out["p99_ms"] = percentile(times, 99)
    out["max_ms"] = times[-1]
    out["mean_total_matches"] = totals / len(times)
    out["hit_rate"] = found / len(times)
    out["hit_rate_typo"] = found_typo / n_typo if n_typo else float("nan")
    return {f"{prefix}_{k}": v for k, v in out.items()}


def bench_naive(db: Database, tenant: str, lookups: list[tuple[str, str, bool]], budget_s: float,
                prefix: str = "naive_like") -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run(conn: Any, name: str) -> list[Any]:
        escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = NAIVE_SQL_PG if conn.dialect.name == "postgresql" else NAIVE_SQL
        return conn.execute(stmt.bindparams(tenant=tenant, pattern=f"%{escaped}%", limit=25)).all()

    for name, _, _ in lookups[:WARMUP]:
        with db.connect() as conn:
            run(conn, name)
    times: list[float] = []
    found = found_typo = n_typo = 0
    phase_start = time.perf_counter()
    for name, truth, has_typo in lookups:
        if time.perf_counter() - phase_start > budget_s:
            break
        started = time.perf_counter()
        # A connection (transaction) per lookup, as LeadSearch.search does.
        with db.connect() as conn:
            rows = run(conn, name)
        times.append((time.perf_counter() - started) * 1000)
        hit = any(r.company == truth for r in rows)
        found += hit
        if has_typo:
            n_typo += 1
            found_typo += hit
    times.sort()
    out["queries_timed"] = len(times)
    out["budget_hit"] = len(times) < len(lookups)
    out["p50_ms"] = percentile(times, 50)
    out["p95_ms"] = percentile(times, 95)
    out["p99_ms"] = percentile(times, 99)
    out["hit_rate"] = found / len(times)
    out["hit_rate_typo"] = found_typo / n_typo if n_typo else float("nan")
    return {f"{prefix}_{k}": v for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000, help="leads to generate and import")
    parser.add_argument("--queries", type=int, default=500, help="fuzzy company lookups to time")
    parser.add_argument("--repeat", type=int, default=REPEAT,
                        help="first imports to time, each into a fresh database (judged on the median)")
    parser.add_argument("--db-url", default=None, help="SQLAlchemy URL (default: SQLite in a temp dir)")
    parser.add_argument("--phase-budget-s", type=float, default=PHASE_BUDGET_S,
                        help="stop a latency phase early after this many seconds (bounds the run time)")
    args = parser.parse_args(argv)
    if args.leads < 1 or args.queries < 1 or args.repeat < 1:
        parser.error("--leads, --queries and --repeat must be positive")

    print(
        f"# lead_store benchmark: machine={platform.machine()} processor={platform.processor() or 'unknown'} "
        f"cpus={os.cpu_count()} python={platform.python_version()} ({platform.python_implementation()}) "
        f"platform={platform.platform()}",
        flush=True,
    )
    # This machine's speed varies from minute to minute: a fixed pure-Python loop, timed at
    # the start and the end, lets a reader compare runs made at different moments or machines.
    emit("cpu_ref_start_s", cpu_reference())
    tmpdir = Path(tempfile.mkdtemp(prefix="bench-leads-"))
    run_tag = f"bench-{os.getpid()}-{int(time.time())}"

    def fresh(label: str) -> tuple[Database, str]:
        """A fresh database (SQLite: a new temp dir; --db-url: a new tenant) with cold caches."""
        cold_start()
        home = tmpdir / label
        home.mkdir()
        db = open_db(home, args.db_url)
        return db, ("default" if args.db_url is None else f"{run_tag}-{label}")

    try:
        started = time.perf_counter()
        rows = generate_leads(args.leads, seed=SEED)
        generate_s = time.perf_counter() - started
        csv_path = tmpdir / "leads.csv"
        write_csv(rows, csv_path)
        n = len(rows)

        runs: list[dict[str, Any]] = []
        db: Database | None = None
        tenant = ""
        for i in range(1, args.repeat + 1):
            # Earlier runs' files stay until the end: deleting 100 MB mid-benchmark makes the
            # disk discard and write back while the next run is being timed.
            db, tenant = fresh(f"run{i}")
            if i == 1:
                emit("db_dialect", db.dialect)
                emit("db_url", db.safe_url if args.db_url else "sqlite:///<tmpdir>/run<N>/bench.db")
                emit("generate_s", generate_s)
                emit("leads", n)
                emit("companies", len({r["domain"] for r in rows}))
                emit("csv_bytes", csv_path.stat().st_size)
                emit("repeat", args.repeat)
            run = bench_first_import(csv_path, db, tenant, n)
            runs.append(run)
            emit(f"import1_run{i}_tenant", tenant)
            emit(f"import1_run{i}_s", run["import1_s"])
            emit(f"import1_run{i}_rows_s", run["import1_rows_s"])
        assert db is not None
        rates = [r["import1_rows_s"] for r in runs]
        import1_median = statistics.median(rates)
        emit("import1_rows_s_median", import1_median)
        emit("import1_rows_s_best", max(rates))
        emit("import1_rows_s_worst", min(rates))
        last = runs[-1]
        for key in ("import1_inserted", "import1_updated", "import1_unchanged", "import1_rejected",
                    "import1_companies_inserted"):
            emit(key, last[key])

        # The re-import and the lookups run against the last database.
        imp2 = bench_reimport(csv_path, db, tenant, n)
        for key, value in imp2.items():
            emit(key, value)

        lookups = make_lookups(rows, args.queries)
        emit("lookups_with_typo", sum(1 for _, _, t in lookups if t))
        # The imports left ~600 MB of dirty pages; flush them before timing reads, so the
        # kernel's write-back does not share the two cores with the lookups.
        os.sync()
        fz = bench_fuzzy(db, tenant, lookups, args.phase_budget_s)
        for key, value in fz.items():
            emit(key, value)
        os.sync()
        nv = bench_naive(db, tenant, lookups, args.phase_budget_s)
        for key, value in nv.items():
            emit(key, value)
        emit("fuzzy_vs_naive_p50_ratio", fz["fuzzy_p50_ms"] / nv["naive_like_p50_ms"])

        # The named import peer, in a database of its own, caches cold as well.
        naive_db, naive_tenant = fresh("naive_orm")
        orm = naive_orm_import(csv_path, naive_db, naive_tenant, min(NAIVE_ORM_ROWS, n))
        emit("naive_orm_tenant", naive_tenant)
        for key, value in orm.items():
            emit(key, value)
        emit("import_speedup_vs_naive_orm", import1_median / orm["naive_orm_import_rows_s"])
        emit("cpu_ref_end_s", cpu_reference())

        checks = [
            (f"import_rows_s>={TARGET_IMPORT_ROWS_S:.0f}", import1_median >= TARGET_IMPORT_ROWS_S,
             f"{import1_median:.0f} median of {len(rates)} runs, best {max(rates):.0f}"),
            ("reimport_all_unchanged", bool(imp2["import2_all_unchanged"]), f"{imp2['import2_unchanged']}"),
            (f"fuzzy_p50_ms<={TARGET_P50_MS:g}", fz["fuzzy_p50_ms"] <= TARGET_P50_MS,
             f"{fz['fuzzy_p50_ms']:.3f} over {fz['fuzzy_queries_timed']} queries"),
            (f"fuzzy_p99_ms<={TARGET_P99_MS:g}", fz["fuzzy_p99_ms"] <= TARGET_P99_MS,
             f"{fz['fuzzy_p99_ms']:.3f} over {fz['fuzzy_queries_timed']} queries"),
        ]
        for name, ok, measured in checks:
            print(f"{'PASS' if ok else 'FAIL'} {name} (measured {measured})", flush=True)
    finally:
        Database.forget_all()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        import traceback

        traceback.print_exc()
        print(f"ERROR {exc.__class__.__name__}: {exc}", flush=True)
    sys.exit(0)
