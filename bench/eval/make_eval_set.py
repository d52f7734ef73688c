"""Writes the labelled evaluation set: ``leads.csv`` and ``labels.json`` beside this file.

Each generated lead has hidden attributes (sector, function, city, size band)
and a surface form chosen among several ways people write them ("Payments",
"Digital Banking" and "Fintech" are one sector; "VP Sales", "Account
Executive" and "Chief Revenue Officer" one function).  Queries are written in
plain language from the hidden attributes, so a search that only matches
words finds part of the answer and one that knows meaning can find the rest.
The ICP labels say which leads truly fit the evaluation campaign.

The files are committed; run this only to change the set (same seed, same files)::

    python bench/eval/make_eval_set.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261124
N_LEADS = 3000

SECTORS = {
    "fintech": ["Fintech", "Payments", "Digital Banking", "Financial Technology", "Lending Platform", "Neobank"],
    "healthtech": ["Healthtech", "Digital Health", "Medical Software", "Telemedicine", "Health IT"],
    "security": ["Cybersecurity", "Information Security", "Network Security", "Identity Management"],
    "logistics": ["Logistics", "Freight Forwarding", "Supply Chain Software", "Shipping", "Fleet Management"],
    "ecommerce": ["E-commerce", "Online Retail", "Marketplace", "Direct-to-Consumer Brand"],
    "edtech": ["Edtech", "Online Learning", "Education Technology", "Corporate Training"],
    "climate": ["Climate Tech", "Renewable Energy", "Solar Power", "Carbon Accounting"],
    "manufacturing": ["Manufacturing", "Industrial Machinery", "Factory Automation", "Precision Engineering"],
}
FUNCTIONS = {
    "sales": ["Head of Sales", "VP Sales", "Account Executive", "Sales Director", "Chief Revenue Officer",
              "Business Development Manager", "Sales Development Representative"],
    "marketing": ["Head of Marketing", "CMO", "Growth Marketing Manager", "Demand Generation Lead",
                  "Brand Manager"],
    "engineering": ["CTO", "VP Engineering", "Software Engineer", "Head of Platform", "Engineering Manager"],
    "finance": ["CFO", "Finance Director", "Head of Finance", "Financial Controller"],
    "people": ["Head of People", "HR Director", "Talent Acquisition Lead", "Chief People Officer"],
}
CITIES = {
    "berlin": ["Berlin", "Berlin, Germany"], "munich": ["Munich", "München"], "london": ["London", "London, UK"],
    "paris": ["Paris", "Paris, France"], "amsterdam": ["Amsterdam"], "madrid": ["Madrid", "Madrid, Spain"],
    "stockholm": ["Stockholm"], "new_york": ["New York", "NYC"],
}
SIZES = {"startup": ["1-10", "11-50"], "growth": ["51-200", "201-500"], "enterprise": ["1001-5000", "5000+"]}

# How queries name things: often not the words the leads use.
SECTOR_WORDS = {"fintech": ["fintech", "payments and banking"], "healthtech": ["digital health", "healthcare software"],
                "security": ["cybersecurity", "security software"], "logistics": ["logistics", "supply chain"],
                "ecommerce": ["online retail", "e-commerce"], "edtech": ["edtech", "online education"],
                "climate": ["clean energy", "climate tech"], "manufacturing": ["industrial", "manufacturing"]}
FUNCTION_WORDS = {"sales": ["sales people", "revenue leaders", "sales teams"],
                  "marketing": ["marketers", "marketing leaders"], "engineering": ["engineering leaders", "developers"],
                  "finance": ["finance leaders"], "people": ["HR and recruiting"]}
CITY_WORDS = {"berlin": "Berlin", "munich": "Munich", "london": "London", "paris": "Paris",
              "amsterdam": "Amsterdam", "madrid": "Madrid", "stockholm": "Stockholm", "new_york": "New York"}
SIZE_WORDS = {"startup": "startups", "growth": "scale-ups", "enterprise": "large companies"}

FIRST = "Ada Ben Chloe Dario Elif Femi Greta Hiro Ilse Jonas Kemal Lena Marta Nils Olga Pia Rafa Sana Tom Vera".split()
LAST = "Adler Brun Costa Dietz Eder Fuchs Gross Horn Ibsen Jung Kurz Lang Moser Nagel Ott Pohl Roth Stein Thal Ulm".split()


def make() -> tuple[list[dict[str, str]], dict[str, object]]:
    rng = random.Random(SEED)
    companies = []
    for n in range(N_LEADS // 6):
        sector = rng.choice(list(SECTORS))
        city = rng.choice(list(CITIES))
        size = rng.choice(list(SIZES))
        stem = "".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        companies.append({"name": f"{stem.capitalize()} {rng.choice(['Labs', 'GmbH', 'Ltd', 'Inc.', 'Group', 'AB'])}",
                          "domain": f"{stem}{n}.example", "sector": sector, "industry": rng.choice(SECTORS[sector]),
                          "city": city, "location": rng.choice(CITIES[city]), "size_band": size,
                          "size": rng.choice(SIZES[size])})
    leads, hidden = [], {}
    for n in range(N_LEADS):
        company = rng.choice(companies)
        function = rng.choice(list(FUNCTIONS))
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}.{n}@{company['domain']}".lower()
        leads.append({"email": email, "first_name": first, "last_name": last,
                      "title": rng.choice(FUNCTIONS[function]), "company": company["name"],
                      "domain": company["domain"], "industry": company["industry"], "size": company["size"],
                      "location": company["location"], "company_location": company["location"],
                      "lawful_basis": "legitimate_interest", "consent_source": "evaluation set"})
        hidden[email] = {"sector": company["sector"], "function": function, "city": company["city"],
                         "size": company["size_band"]}
    queries = []
    combos = sorted({(h["sector"], h["function"], h["city"]) for h in hidden.values()})
    rng.shuffle(combos)
    for sector, function, city in combos:
        relevant = sorted(e for e, h in hidden.items()
                          if (h["sector"], h["function"], h["city"]) == (sector, function, city))
        if len(relevant) < 3:
            continue
        text = f"{rng.choice(SECTOR_WORDS[sector])} companies in {CITY_WORDS[city]}, {rng.choice(FUNCTION_WORDS[function])}"
        queries.append({"text": text, "relevant": relevant, "hidden": [sector, function, city]})
        if len(queries) == 40:
            break
    # Queries that also name a size band: "fintech startups in Berlin hiring sales people".
    for sector, function, city, size in (("fintech", "sales", "berlin", "startup"),
                                         ("security", "engineering", "london", "growth"),
                                         ("climate", "marketing", "paris", "startup")):
        relevant = sorted(e for e, h in hidden.items() if (h["sector"], h["function"], h["city"], h["size"])
                          == (sector, function, city, size))
        if relevant:
            queries.append({"text": f"{SECTOR_WORDS[sector][0]} {SIZE_WORDS[size]} in {CITY_WORDS[city]} hiring "
                                    f"{FUNCTION_WORDS[function][0]}", "relevant": relevant,
                            "hidden": [sector, function, city, size]})
    # Industry and seniority are rules; the sales function is left to the description, which only an
    # embedder that knows meaning can weigh ("Account Executive" and "pipeline" share no word).
    icp = {"rules": [{"field": "industry", "any_of": SECTORS["fintech"], "weight": 40},
                     {"field": "title", "any_of": ["Head", "VP", "Director", "Chief"], "weight": 20}],
           "description": "sales and revenue leadership: selling, pipeline, deals, quota",
           "description_weight": 40, "threshold": 70}
    senior = ("Head", "VP", "Director", "Chief")
    fit = sorted(lead["email"] for lead in leads
                 if hidden[lead["email"]]["sector"] == "fintech" and hidden[lead["email"]]["function"] == "sales"
                 and any(w in lead["title"] for w in senior))
    return leads, {"seed": SEED, "queries": queries, "icp": icp, "icp_fit": fit}


def main() -> None:
    leads, labels = make()
    with (HERE / "leads.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(leads[0]))
        writer.writeheader()
        writer.writerows(leads)
    (HERE / "labels.json").write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    print(f"{len(leads)} leads, {len(labels['queries'])} queries, {len(labels['icp_fit'])} ICP fits")


if __name__ == "__main__":
    main()
