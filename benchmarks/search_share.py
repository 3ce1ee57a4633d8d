"""How often `limitr search` hits mention the finding searched for, against chance.

For each query: the share of the top-K hits whose report mentions the finding, against the
share of all gallery reports that mention it (what a random ranking would give on average),
and the exact one-sided hypergeometric p-value of at least that many. A report mentions a
finding when one of its sentences holds every content word of the query and is not a
negation ("no ...", "without ..."); the loose figure only asks for the query's last word.

    python benchmarks/search_share.py                                   # the default query
    python benchmarks/search_share.py "left pleural effusion" "moderate cardiomegaly" --k 20
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

STOP = {"a", "an", "the", "of", "in", "is", "there", "with", "and"}
NEGATION = re.compile(r"^(no|without|negative for|not)\b|\bno (evidence|focal|new)\b")


def sentences(report: str) -> list[str]:
    return [s.strip() for s in re.split(r"[.;]\s*", report.lower()) if s.strip()]


def mentions(report: str, query: str, loose: bool = False) -> bool:
    words = [w for w in re.findall(r"[a-z]+", query.lower()) if w not in STOP]
    if loose:
        words = words[-1:]
    for sentence in sentences(report):
        tokens = set(re.findall(r"[a-z]+", sentence))
        if all(w in tokens for w in words) and not NEGATION.search(sentence):
            return True
    return False


def hypergeom_tail(population: int, successes: int, draws: int, observed: int) -> float:
    """P(X >= observed) for X hypergeometric."""
    total = math.comb(population, draws)
    return sum(math.comb(successes, x) * math.comb(population - successes, draws - x)
               for x in range(observed, min(successes, draws) + 1)) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("queries", nargs="*", default=["right upper lobe consolidation"])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from limitr.use import Explorer, load, load_gallery

    model = load(args.data / "model", tokenizer=args.data / "tokens" / "tokenizer")
    gallery = load_gallery(args.data / "embeddings", "test", args.data / "shards", model.fingerprint, model.crop_size)
    explorer = Explorer(model, gallery, exact=args.exact)
    all_items = gallery.items(list(range(len(gallery))))
    out = []
    for result in explorer.find_images(args.queries, k=args.k):
        hits = gallery.items([h.row for h in result.hits])
        row = {"query": result.query, "k": len(hits), "gallery": len(all_items)}
        for name, loose in (("strict", False), ("loose", True)):
            in_gallery = sum(mentions(i.text, result.query, loose) for i in all_items)
            in_hits = sum(mentions(i.text, result.query, loose) for i in hits)
            row[name] = {"hits_mentioning": in_hits, "hit_share": in_hits / len(hits),
                         "gallery_mentioning": in_gallery, "chance_share": in_gallery / len(all_items),
                         "p_value": hypergeom_tail(len(all_items), in_gallery, len(hits), in_hits)}
        out.append(row)
        s, lo = row["strict"], row["loose"]
        print(f"{result.query!r}: {s['hits_mentioning']}/{row['k']} hits mention it ({s['hit_share']:.0%}) "
              f"against chance {s['chance_share']:.1%} ({s['gallery_mentioning']}/{row['gallery']}), "
              f"p = {s['p_value']:.2g}; last word only: {lo['hits_mentioning']}/{row['k']} against "
              f"{lo['chance_share']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
