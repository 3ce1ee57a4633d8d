"""How often `limitr search` hits mention the finding searched for, against chance.

For each query: the share of the top-K hits whose report mentions the finding, against the
share of all gallery reports that mention it (what a random ranking would give on average),
and the exact one-sided hypergeometric p-value of at least that many. A report mentions a
finding when one of its sentences holds every content word of the query and is not a
negation ("no ...", "without ..."); the loose figure only asks for the query's last word; the
label figure counts studies whose CheXpert label for the finding's class is positive.

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
NEGATION = re.compile(r"\b(no|without|not|negative for|free of)\b")
#: CheXpert label columns of the study shards a query word names (the labeller's reading).
LABELS = {"consolidation": "Consolidation", "effusion": "Pleural Effusion", "cardiomegaly": "Cardiomegaly",
          "pneumothorax": "Pneumothorax", "edema": "Edema", "atelectasis": "Atelectasis", "pneumonia": "Pneumonia",
          "nodule": "Lung Lesion", "mass": "Lung Lesion", "opacity": "Lung Opacity"}


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


def study_labels(shards: Path, label: str) -> dict[int, float]:
    """study_id -> the CheXpert label value (1 positive, 0 negative, -1 uncertain) of the test split."""
    import pyarrow.parquet as pq

    out: dict[int, float] = {}
    for path in sorted((Path(shards) / "test").glob("part-*.parquet")):
        table = pq.read_table(path, columns=["study_id", label])
        out.update(zip(table.column("study_id").to_pylist(), table.column(label).to_pylist()))
    return out


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
        label = next((LABELS[w] for w in re.findall(r"[a-z]+", result.query.lower()) if w in LABELS), None)
        if label is not None:
            values = study_labels(args.data / "shards", label)
            in_gallery = sum(values.get(i.key) == 1.0 for i in all_items)
            in_hits = sum(values.get(i.key) == 1.0 for i in hits)
            row["label"] = {"label": label, "hits_mentioning": in_hits, "hit_share": in_hits / len(hits),
                            "gallery_mentioning": in_gallery, "chance_share": in_gallery / len(all_items),
                            "p_value": hypergeom_tail(len(all_items), in_gallery, len(hits), in_hits)}
        out.append(row)
        s, lo = row["strict"], row["loose"]
        print(f"{result.query!r}: {s['hits_mentioning']}/{row['k']} hits mention it ({s['hit_share']:.0%}) "
              f"against chance {s['chance_share']:.1%} ({s['gallery_mentioning']}/{row['gallery']}), "
              f"p = {s['p_value']:.2g}; last word only: {lo['hits_mentioning']}/{row['k']} against "
              f"{lo['chance_share']:.1%}" + (f"; label {row['label']['label']} positive: "
                                             f"{row['label']['hits_mentioning']}/{row['k']} against "
                                             f"{row['label']['chance_share']:.1%}" if "label" in row else ""))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
