"""Browser speed: open-and-render of a 1 MB page, and search-to-page latency, against local servers.

    python benchmarks/browser.py [--runs 20]

Servers: the test web of ``tests/tools/websim.py`` (real HTTP on 127.0.0.1; the fake public
names resolve through the browser's DNS seam, so the SSRF guard stays on as in real use).

Measured:
- ``open_1mb``: ``browser.open`` of a ~1 MB HTML page, end to end (fetch, HTML to text, line
  wrapping, token-sized window); the page is refetched every run.
- ``convert_1mb``: HTML to text alone, ours (selectolax/lexbor) next to the peer: html2text after
  lxml's parse, the converter openai/gpt-oss's ``simple_browser`` uses (measured if installed).
- ``search_to_page``: ``browser.search`` (DuckDuckGo HTML format) then ``open`` of the first
  result, a fresh browser each run.

Writes a table to stdout and benchmarks/results/browser.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tools"))

import websim  # noqa: E402
from gptoss_agent.model import load_tokenizer  # noqa: E402
from gptoss_agent.tools.page import html_to_text, worker_pids  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "browser.json"


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Wall-clock p50/p95/mean and the p50 of CPU time (this process, all threads, and the HTML
    worker processes: steadier than wall time on a shared machine)."""
    ms = sorted(wall * 1000 for wall, _ in samples)
    cpu = [c * 1000 for _, c in samples]
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2),
        "mean_ms": round(statistics.mean(ms), 2),
        "cpu_p50_ms": round(statistics.median(cpu), 2),
        "n": len(ms),
    }


def cpu_time() -> float:
    """CPU seconds of this process and of the browser's HTML worker processes (Linux /proc)."""
    total = time.process_time()
    for pid in worker_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(fn, runs: int) -> list[tuple[float, float]]:
    fn()  # warm up
    samples = []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), cpu_time()
        fn()
        samples.append((time.perf_counter() - wall, cpu_time() - cpu))
    return samples


def html2text_peer():
    """The simple_browser converter: lxml parse and serialise, then html2text (None if absent)."""
    try:
        import html2text
        import lxml.etree
        import lxml.html
    except ImportError:
        return None

    def convert(html: str) -> str:
        root = lxml.html.fromstring(html)
        clean = lxml.etree.tostring(root, encoding="UTF-8").decode()
        h = html2text.HTML2Text()
        h.ignore_links = h.ignore_images = h.ignore_tables = h.ignore_emphasis = True
        h.body_width = 0
        h.unicode_snob = True
        return h.handle(clean)

    return convert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    enc = load_tokenizer()
    sites = websim.Sites()
    page_bytes = len(sites.huge.encode())
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "page_bytes": page_bytes,
        "runs": args.runs,
    }
    internal = websim.Server(lambda request: websim.Response())
    with websim.Server(sites) as site, internal, websim.Server(websim.SearchApis()) as search:
        web = websim.Web(site=site, internal=internal, search=search)

        browser = web.browser(enc=enc)
        results["open_1mb"] = summary(
            timed(lambda: browser.call("open", '{"id": "http://news.test/huge"}'), args.runs)
        )
        results["open_1mb"]["lines"] = len(browser.pages[-1].lines)  # type: ignore[index]

        def search_to_page() -> None:
            fresh = web.browser(enc=enc)
            assert not fresh.call("search", '{"query": "tidal energy"}').is_error
            assert not fresh.call("open", '{"id": 0}').is_error

        results["search_to_page"] = summary(timed(search_to_page, args.runs))

    results["convert_1mb"] = {
        "selectolax (ours)": summary(
            timed(lambda: html_to_text(sites.huge, "http://news.test/huge"), args.runs)
        )
    }
    peer = html2text_peer()
    if peer is not None:
        results["convert_1mb"]["lxml + html2text (simple_browser)"] = summary(
            timed(lambda: peer(sites.huge), max(3, args.runs // 4))
        )  # type: ignore[index]

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"page: {page_bytes / 1e6:.2f} MB HTML; {results['machine']}; Python {results['python']}\n")
    print("| measurement | p50 ms | p95 ms | mean ms | CPU p50 ms | n |\n|---|---|---|---|---|---|")
    rows = [
        ("open + render 1 MB page", results["open_1mb"]),
        ("search -> open first result", results["search_to_page"]),
    ]
    rows += [(f"HTML to text 1 MB: {name}", value) for name, value in results["convert_1mb"].items()]  # type: ignore[union-attr]
    for name, value in rows:
        print(
            f"| {name} | {value['p50_ms']} | {value['p95_ms']} | {value['mean_ms']} | {value['cpu_p50_ms']} | {value['n']} |"
        )


if __name__ == "__main__":
    main()
