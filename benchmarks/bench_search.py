"""Search speed, index recall and user-image encoding throughput (limitr.use).

1. Query latency, model loaded: one text query over a 2,000-study gallery, global top 100
   re-ranked with the combined score (target under 1 s on 2 cores). The gallery is the
   embedded test split repeated to 2,000 studies (the work per study is the same).
2. Global stage over 100,000 synthetic unit vectors (D = the model's width): top 100 with the
   faiss index (target under 50 ms) and its recall@100 against exact search (target >= 0.99),
   brute-force torch timed beside it.
3. Encoding throughput (studies/s, frontal + lateral): the original image files through the
   API (decode, resize and pad, crop, encoders) against `limitr embed`'s image path over the
   same studies' preprocessed shards (decode, crop, encoders); the encoders dominate, so the
   two should agree within about 10%.

    python benchmarks/bench_search.py                       # the default pipeline's outputs
    python benchmarks/bench_search.py --threads 2 --json out.json
    python benchmarks/bench_search.py --quick --data DIR    # small sizes, one repetition
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def best_of(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def tile(bundle, n: int):
    from limitr.eval.scoring import take

    rows = torch.arange(n) % bundle.global_emb.shape[0]
    return take(bundle, rows)


def query_latency(model, gallery, n: int, repeats: int) -> dict:
    from limitr.use.search import GlobalIndex, search_images

    images = tile(gallery.images, n)
    keys = torch.arange(n)
    index = GlobalIndex(torch.nn.functional.normalize(images.global_emb, dim=-1))

    def run():
        texts = model.encode_text(["right upper lobe consolidation"])
        search_images(model.model, images, keys, texts, ["q"], k=10, candidates=100, index=index,
                      device=model.device)

    run()  # warm-up
    best, median = best_of(run, repeats)
    text_best, _ = best_of(lambda: model.encode_text(["right upper lobe consolidation"]), repeats)
    return {"gallery": n, "candidates": 100, "best_s": best, "median_s": median, "text_encoding_s": text_best,
            "regions_per_study": int(images.local.shape[1])}


def index_figures(dim: int, n: int, queries: int, repeats: int) -> dict:
    from limitr.use.search import GlobalIndex

    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(queries, dim, generator=g), dim=-1)
    t0 = time.perf_counter()
    index = GlobalIndex(vectors, threshold=0)
    build = time.perf_counter() - t0
    brute = GlobalIndex(vectors, threshold=n + 1)
    _, exact = brute.search(q, 100)
    _, found = index.search(q, 100)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact, found)) / (100 * queries)
    one = q[:1]
    faiss_best, faiss_median = best_of(lambda: index.search(one, 100), repeats)
    torch_best, torch_median = best_of(lambda: brute.search(one, 100), repeats)
    return {"vectors": n, "dim": dim, "index": index.kind, "build_s": build, "faiss_best_s": faiss_best,
            "faiss_median_s": faiss_median, "torch_best_s": torch_best, "torch_median_s": torch_median,
            "recall_at_100": recall, "queries_for_recall": queries}


def encoding_throughput(model, shards: Path, tokens: Path, raw: Path, n: int, repeats: int) -> dict:
    import pyarrow.parquet as pq

    from limitr.data.mimic import image_path
    from limitr.train.dataset import StudyDataset, collate_studies

    dataset = StudyDataset(shards, tokens, "test", model.crop_size, train=False)
    files = sorted((shards / "test").glob("part-*.parquet"))
    table = pq.read_table(files, columns=["subject_id", "study_id", "frontal_dicom_id", "lateral_dicom_id"]) \
        if len(files) == 1 else pq.ParquetDataset(files).read(columns=["subject_id", "study_id", "frontal_dicom_id",
                                                                         "lateral_dicom_id"])
    rows = {r["study_id"]: r for r in table.to_pylist()}
    chosen = list(range(min(n, len(dataset))))
    fronts, lats = [], []
    for i in chosen:
        r = rows[int(dataset.study_ids[i])]
        fronts.append(image_path(raw, r["subject_id"], r["study_id"], r["frontal_dicom_id"]))
        lats.append(image_path(raw, r["subject_id"], r["study_id"], r["lateral_dicom_id"])
                    if r["lateral_dicom_id"] and dataset.image_bytes(i)[1] is not None else None)
    lateral = model.lateral
    batch = model.batch_size

    @torch.no_grad()
    def embed_path():
        for start in range(0, len(chosen), batch):
            items = [dataset[i] for i in chosen[start : start + batch]]
            inputs = collate_studies(items).to_model_inputs(model.device, model.upsample_to, lateral=lateral)
            model.model.encode_images(inputs.frontal, inputs.lateral, inputs.has_lateral)

    def api_path():
        model.encode_images(fronts, lats)

    embed_path(), api_path()  # warm-up
    e_best, _ = best_of(embed_path, repeats)
    a_best, _ = best_of(api_path, repeats)
    return {"studies": len(chosen), "with_lateral": sum(x is not None for x in lats),
            "embed_studies_per_s": len(chosen) / e_best, "api_studies_per_s": len(chosen) / a_best,
            "api_over_embed": (len(chosen) / a_best) / (len(chosen) / e_best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="the pipeline's data folder")
    parser.add_argument("--raw", type=Path, default=None, help="MIMIC-format root of the original files "
                        "(default DATA/raw/synthetic/mimic-cxr-jpg)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gallery", type=int, default=2000)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--studies", type=int, default=128, help="studies for the encoding throughput")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.gallery, args.vectors, args.studies, args.repeats = 50, 2000, 8, 1
    torch.set_num_threads(args.threads)

    from limitr.use import load, load_gallery

    data = args.data
    if not (data / "model").is_dir() or not (data / "embeddings").is_dir():
        print(f"skipped: no trained model and embeddings in {data} (run `make run` first)")
        return
    model = load(data / "model", tokenizer=data / "tokens" / "tokenizer")
    gallery = load_gallery(data / "embeddings", "test", data / "shards", model.fingerprint, model.crop_size)
    out = {"threads": args.threads}
    out["query"] = query_latency(model, gallery, args.gallery, args.repeats)
    q = out["query"]
    print(f"query over {q['gallery']} studies ({q['regions_per_study']} regions each), global + re-rank of "
          f"{q['candidates']}: {q['best_s'] * 1000:.0f} ms best, {q['median_s'] * 1000:.0f} ms median "
          f"(text encoding {q['text_encoding_s'] * 1000:.0f} ms); target < 1000 ms")
    out["index"] = index_figures(int(gallery.images.global_emb.shape[1]), args.vectors, 20, 1 if args.quick else max(args.repeats, 20))
    ix = out["index"]
    print(f"global top 100 over {ix['vectors']} vectors (D={ix['dim']}) with {ix['index']}: "
          f"{ix['faiss_best_s'] * 1000:.1f} ms best, {ix['faiss_median_s'] * 1000:.1f} ms median "
          f"(torch {ix['torch_median_s'] * 1000:.1f} ms), recall@100 {ix['recall_at_100']:.3f}; "
          "targets < 50 ms, >= 0.99")
    raw = args.raw or data / "raw" / "synthetic" / "mimic-cxr-jpg"
    out["encoding"] = encoding_throughput(model, data / "shards", data / "tokens", raw, args.studies,
                                          max(1, args.repeats // 2))
    en = out["encoding"]
    print(f"encoding {en['studies']} studies ({en['with_lateral']} with a lateral): API from the original files "
          f"{en['api_studies_per_s']:.1f} studies/s, embed's path from the shards {en['embed_studies_per_s']:.1f} "
          f"studies/s, ratio {en['api_over_embed']:.2f}; target within 10%")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
