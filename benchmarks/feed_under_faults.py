"""Feed SciFact into the fake Vespa clean and under injected faults, same process; print the ratio.

Issue 8's acceptance: under 20% injected 429/500 and 5% dropped connections, a feed of SciFact's
5,183 documents ends with every document stored exactly once with the right codes and calibration
id, within 2x the time of a clean feed against the same fake; and a feed against a server that
never answers exits within ``--timeout``. Uses the cached all-MiniLM-L6-v2 embeddings (never
embeds) and the fake Vespa of ``tests/fake_vespa.py``; the default HTTP policy of ``vespa-quant
feed``. Run: ``python benchmarks/feed_under_faults.py [--methods binary_asym,int8_asym]
[--never-answering]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_vespa import serving  # noqa: E402
from fault_vespa import FaultPlan, silent_server  # noqa: E402
from test_acceptance_faults import assert_every_document_once  # noqa: E402

from vespa_quant.embed.embedded import load_embedded  # noqa: E402
from vespa_quant.quantize.registry import parse_methods  # noqa: E402
from vespa_quant.vespa.feeder import feed  # noqa: E402


def timed_feed(embedded, methods, dim: int, plan: FaultPlan | None, concurrency: int) -> tuple[float, object]:
    with serving(plan) as fake, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        report = feed(fake.url, embedded, methods, [dim], calibration_dir=Path(tmp), concurrency=concurrency,
                      progress=False)
        seconds = time.perf_counter() - started
        assert report.complete, report.summary()
        assert_every_document_once(fake, embedded, Path(tmp), dim)
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/datasets/scifact")
    parser.add_argument("--methods", default="binary_asym,int8_asym")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs each (the machine is shared)")
    parser.add_argument("--never-answering", action="store_true",
                        help="also time `vespa-quant feed` against a server that never answers, default --timeout")
    args = parser.parse_args()

    embedded = load_embedded(args.data, "all-MiniLM-L6-v2", show_progress=False)
    methods = parse_methods(args.methods)
    print(f"{embedded.dataset.name}: {len(embedded.dataset.doc_ids)} documents, {args.methods} @ {args.dim}, "
          f"concurrency {args.concurrency}")
    clean = faulty = float("inf")
    for _ in range(args.repeats):  # interleaved, so both see the same load
        clean = min(clean, timed_feed(embedded, methods, args.dim, None, args.concurrency)[0])
        plan = FaultPlan(seed=args.seed, statuses={429: 0.10, 500: 0.10}, drop=0.05)
        seconds, report = timed_feed(embedded, methods, args.dim, plan, args.concurrency)
        faulty = min(faulty, seconds)
    print(f"clean feed            {clean:7.2f} s  (best of {args.repeats})")
    print(f"20% 429/500, 5% drops {faulty:7.2f} s   ratio faulty/clean {faulty / clean:.2f}  "
          f"(faults injected: {dict(plan.injected)} over {plan.requests} requests; "
          f"{report.sent.attempts} put attempts for {report.sent.n_ok} documents)")
    print("both: every document stored exactly once with the manifest's codes and calibration ids")
    if args.never_answering:
        with silent_server() as url, tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "vespa_quant", "feed", "--dataset", args.data,
                                   "--methods", args.methods, "--dims", str(args.dim), "--endpoint", url,
                                   "--calibration-dir", tmp], cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
        print(f"never-answering server: exit {done.returncode} after {seconds:.1f} s (default --timeout 60): "
              f"{done.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
