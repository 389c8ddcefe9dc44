"""Turn a pytest-benchmark JSON file into benchmarks/RESULTS.md tables.

pytest --benchmark-only --benchmark-json=.benchmarks/latest.json
python benchmarks/report.py .benchmarks/latest.json > benchmarks/RESULTS.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from tumor_runtime.imaging.pool import PROCESS_MIN_ITEMS

SERVERS = {"1": "one process (default)", "0": "`--workers 0`: one per core"}
ORDER = [
    "torch-fp32",
    "torch-dynamic-int8",
    "onnx-fp32",
    "onnx-int8",
    "baseline-int8",
    "openvino-fp32",
    "openvino-int8",
]


def collect(results: dict) -> dict:
    """{model: {variant: {kind: (stats, extra)}}}"""
    table = defaultdict(lambda: defaultdict(dict))
    for bench in results["benchmarks"]:
        extra = bench["extra_info"]
        table[extra["model"]][extra["variant"]][extra["kind"]] = (bench["stats"], extra)
    return table


def cell(row: dict, kind: str) -> tuple[str, float | None]:
    if kind not in row:
        return "–", None
    stats, extra = row[kind]
    if kind == "size":
        return f"{extra['bytes'] / 1e6:.2f}", extra["bytes"]
    if kind == "latency":
        return f"{stats['median'] * 1e3:.2f} (IQR {stats['iqr'] * 1e3:.2f})", stats["median"]
    if kind == "throughput":
        rate = extra["batch"] / stats["median"]
        return f"{rate:,.0f}", rate
    if kind == "end_to_end":
        rate = extra["images"] / stats["median"]
        return f"{rate:,.0f}", rate
    return f"{extra['f2_macro']:.4f} / {extra['agreement_with_fp32']:.4f}", extra["f2_macro"]


def model_table(name: str, rows: dict) -> tuple[list[str], dict]:
    lines = [
        f"### {name}",
        "",
        "| variant | file MB | 1-image latency, 1 thread, ms (median) | batch-32 img/s, all cores | "
        "tumor-infer end-to-end img/s | macro F2 / top-1 agreement with FP32 |",
        "|---|---|---|---|---|---|",
    ]
    values = {}
    for variant in [v for v in ORDER if v in rows]:
        cells = [cell(rows[variant], k) for k in ("size", "latency", "throughput", "end_to_end", "f2")]
        values[variant] = [v for _, v in cells]
        lines.append(f"| {variant} | " + " | ".join(text for text, _ in cells) + " |")
    return lines + [""], values


def ratio(a, b, fmt="{:.1f}x") -> str:
    return fmt.format(a / b) if a and b else "–"


def machine_lines(machine: dict) -> list[str]:
    return [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; int8/bf16 features: "
        f"{', '.join(machine.get('features', [])) or 'none found'}. Python {machine['python']}, torch "
        f"{machine['torch']}, onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}.",
        "",
        "These figures depend on the CPU: int8 speed on VNNI (AVX-512 VNNI or AVX-VNNI) and AMX, bf16 on "
        "AVX512-BF16 and AMX, and on the core count. Rerun the benchmarks on your machine before relying on them.",
    ]


def seen_line(table: dict) -> list[str]:
    """A warning when the shipped model trained on the bench images (a final fit on the validation split)."""
    seen = table["compact"].get("onnx-int8", {}).get("f2", (None, {}))[1].get("seen_in_training")
    if not seen:
        return []
    return [
        f"The shipped model trained on {seen:.0%} of these images (a final fit): its F2 here shows that its "
        "variants agree, not how accurate it is (see artifacts/MODEL_CARD.md).",
        "",
    ]


def parity_set_line(table: dict) -> str:
    """How many labelled images F2 parity was measured on (a run of a subset of the benchmarks may have none)."""
    scored = [kinds["f2"][1] for rows in table.values() for kinds in rows.values() if "f2" in kinds]
    if not scored:
        return "F2 parity was not measured in this run."
    return f"F2 parity on the bench set of {scored[0]['images']} labelled images."


def rate_of(rows: dict, variant: str, kind: str) -> float | None:
    """Images per second of an end-to-end benchmark (median round), or None if it did not run."""
    stats, extra = rows.get(variant, {}).get(kind, (None, None))
    return extra["images"] / stats["median"] if stats else None


def goal_lines(rows: dict, http: list[dict]) -> list[str]:
    """The speed goals (issue 32), each as the ratio measured in this run against its limit: met or missed."""
    goals = []
    e2e, base = rate_of(rows, "onnx-int8", "end_to_end"), rate_of(rows, "baseline-int8", "end_to_end")
    if e2e and base:
        images = rows["onnx-int8"]["end_to_end"][1]["images"]
        goals.append((f"tumor-infer end to end, {images:,} images, shipped ÷ baseline-int8", e2e / base, 2.0, "x"))
    large = [rate_of(rows, v, "end_to_end_large_processes") for v in ("onnx-int8", "baseline-int8")]
    if all(large):
        images = rows["onnx-int8"]["end_to_end_large_processes"][1]["images"]
        goals.append(
            (f"tumor-infer end to end, {images:,} images, shipped ÷ baseline-int8", large[0] / large[1], 2.0, "x")
        )
    latency = rows.get("onnx-int8", {}).get("latency")
    for workers, server in SERVERS.items():
        by_concurrency = {e["concurrency"]: e for e in http if e.get("workers", "1") == workers}
        if 8 in by_concurrency and e2e:
            ratio = by_concurrency[8]["requests_per_second"] / e2e
            goals.append((f"tumor-serve, {server}: requests/s at concurrency 8 ÷ tumor-infer img/s", ratio, 0.75, "x"))
        if 1 in by_concurrency and latency:
            limit = latency[0]["median"] * 1e3 + 1.0
            name = f"tumor-serve, {server}: p50 at concurrency 1 (ms; limit: the model's 1-image latency + 1 ms)"
            goals.append((name, by_concurrency[1]["p50_ms"], limit, " ms"))
    startup = rows.get("onnx-int8", {}).get("startup")
    if startup:
        goals.append(("start-up to first result (s)", startup[0]["median"], 0.3, " s"))
    if not goals:
        return []
    lines = ["### Speed goals", "", "| goal | measured | limit | |", "|---|---|---|---|"]
    for name, value, limit, unit in goals:
        at_most = unit != "x"  # ratios must reach their limit; times must stay under it
        met = value <= limit if at_most else value >= limit
        sign = "≤" if at_most else "≥"
        lines.append(f"| {name} | {value:.2f}{unit} | {sign} {limit:.2f}{unit} | {'met' if met else 'missed'} |")
    return lines + [""]


def stage_lines(rows: dict) -> list[str]:
    """Where an image's time goes (`benchmarks/stages.py`), shipped against baseline, with the physical limit
    (cores ÷ one image's core time) and the end-to-end rate measured beside it."""
    costs = {v: rows[v]["stages"][1] for v in ("onnx-int8", "baseline-int8") if "stages" in rows.get(v, {})}
    if len(costs) < 2:
        return []
    new, old = costs["onnx-int8"], costs["baseline-int8"]
    cores = new["cores"]
    lines = [
        f"### Where an image's time goes (one thread, µs per image, {new['images']:,} images)",
        "",
        "| stage | shipped (onnx-int8) | baseline-int8 |",
        "|---|---|---|",
    ]
    lines += [f"| {stage} | {new['stages'][stage]:,.0f} | {old['stages'][stage]:,.0f} |" for stage in new["stages"]]
    totals = [sum(c["stages"].values()) for c in (new, old)]
    limits = [cores / total * 1e6 for total in totals]  # the physical limit: cores ÷ one image's core time
    lines.append(f"| **one image's core time** | **{totals[0]:,.0f}** | **{totals[1]:,.0f}** |")
    lines.append(f"| physical limit: {cores} cores ÷ core time, img/s | {limits[0]:,.0f} | {limits[1]:,.0f} |")
    measured = [rate_of(rows, v, "end_to_end") for v in ("onnx-int8", "baseline-int8")]
    if all(measured):
        lines.append(
            f"| tumor-infer end to end, img/s (share of the limit) | {measured[0]:,.0f} "
            f"({measured[0] / limits[0]:.0%}) | {measured[1]:,.0f} ({measured[1] / limits[1]:.0%}) |"
        )
    lines += [
        "",
        f"At the limit the shipped model is {limits[0] / limits[1]:.2f}x the baseline: the most any threading or "
        "batching could give on this CPU without a cheaper stage.",
        "",
    ]
    return lines


def core_times(e: dict) -> str:
    return f"{e['server_cpu_ms']:.2f} / {e['client_cpu_ms']:.2f}" if "server_cpu_ms" in e else "–"


def cores_allow(e: dict, cores: int) -> str:
    if "server_cpu_ms" not in e:
        return "–"
    return f"{cores / (e['server_cpu_ms'] + e['client_cpu_ms']) * 1e3:,.0f}"


def large_folder_lines(rows: dict) -> list[str]:
    """tumor-infer over a large folder, decoding in threads and in worker processes, shipped against baseline."""

    def rate(variant: str, decode: str) -> float | None:
        return rate_of(rows, variant, f"end_to_end_large_{decode}")

    if rate("onnx-int8", "threads") is None:
        return []
    images = rows["onnx-int8"]["end_to_end_large_threads"][1]["images"]
    lines = [
        f"### A large folder ({images:,} images), decoded in threads or in worker processes",
        "",
        "| variant | threads img/s | processes img/s | processes ÷ threads |",
        "|---|---|---|---|",
    ]
    for variant in ("onnx-int8", "baseline-int8"):
        t, p = rate(variant, "threads"), rate(variant, "processes")
        if t and p:
            lines.append(f"| {variant} | {t:,.0f} | {p:,.0f} | {p / t:.2f}x |")
    new, old = rate("onnx-int8", "processes"), rate("baseline-int8", "threads")
    if new and old:
        lines += [
            "",
            f"Shipped model with worker processes (tumor-infer's choice past "
            f"{PROCESS_MIN_ITEMS:,} files) against the baseline as it ran before them (threads): "
            f"{new / old:.2f}x; against the baseline also given processes: "
            f"{ratio(new, rate('baseline-int8', 'processes'), '{:.2f}x')}.",
        ]
    return lines + [""]


def main(path: str) -> None:
    results = json.load(open(path))
    table = collect(results)
    machine = next(iter(next(iter(next(iter(table.values())).values())).values()))[1]["machine"]
    out = [
        "# Benchmark results",
        "",
        *machine_lines(machine),
        "",
        "Latency uses 1 thread; throughput and end-to-end use all cores. " + parity_set_line(table),
        "",
        *seen_line(table),
        "Regenerate: `pytest --benchmark-only --benchmark-json=.benchmarks/latest.json && "
        "python benchmarks/report.py .benchmarks/latest.json > benchmarks/RESULTS.md`",
        "",
    ]
    values = {}
    for model in ("compact", "alexnet"):
        if model in table:
            title = (
                "Shipped compact model"
                if model == "compact"
                else "Reference AlexNet (random weights: F2 is meaningless)"
            )
            lines, values[model] = model_table(title, table[model])
            out += lines
    process = table["compact"].get("onnx-int8", {})
    if "startup" in process or "memory" in process:
        out += ["### tumor-infer as a process (shipped int8 model)", ""]
        if "startup" in process:
            stats, _ = process["startup"]
            out.append(
                f"- start-up to first result (`tumor-infer one.jpg`, new interpreter): median {stats['median']:.2f} s"
            )
        for bench in results["benchmarks"]:
            extra = bench["extra_info"]
            if extra.get("kind") == "memory":
                out.append(
                    f"- peak memory (tumor-infer and its decoding processes) over {extra['images']:,} images: "
                    f"{extra['peak_rss_bytes'] / 2**20:.0f} MiB ({extra['images'] / bench['stats']['median']:,.0f} "
                    f"img/s); over a tenth as many: {extra.get('peak_rss_small_bytes', 0) / 2**20:.0f} MiB"
                )
        out.append("")
    if "end_to_end_heatmaps" in process and "end_to_end" in process:
        with_maps, plain = (
            rate_of(table["compact"], "onnx-int8", "end_to_end_heatmaps"),
            rate_of(table["compact"], "onnx-int8", "end_to_end"),
        )
        out += [
            f"- heat-maps on: {with_maps:,.0f} img/s end to end against {plain:,.0f} img/s off "
            f"({plain / with_maps:.2f}x the time per image)",
            "",
        ]
    if "end_to_end_ray" in process and "end_to_end" in process:
        on_ray, plain = (
            rate_of(table["compact"], "onnx-int8", "end_to_end_ray"),
            rate_of(table["compact"], "onnx-int8", "end_to_end"),
        )
        out += [
            f"- `tumor-infer --ray auto` on this machine (one actor, {process['end_to_end_ray'][1]['images']:,} "
            f"images, actor start-up included): {on_ray:,.0f} img/s against {plain:,.0f} img/s for the plain run "
            f"({plain / on_ray:.2f}x the time per image)",
            "",
        ]
    http = sorted(
        (b["extra_info"] for b in results["benchmarks"] if b["extra_info"].get("kind") == "http"),
        key=lambda e: (e.get("workers", "1") != "1", e["concurrency"]),
    )
    if http and "end_to_end" in process:
        plain = rate_of(table["compact"], "onnx-int8", "end_to_end")
        out += [
            "### tumor-serve (HTTP, single-image POSTs from a local client)",
            "",
            "| server | concurrency | requests/s | p50 ms | p99 ms | requests/s ÷ tumor-infer img/s | server / client "
            "core ms per request | requests/s the cores allow |",
            "|---|---|---|---|---|---|---|---|",
        ]
        cores = results["benchmarks"][0]["extra_info"]["machine"]["cores"]
        out += [
            f"| {SERVERS[e.get('workers', '1')]} | {e['concurrency']} | {e['requests_per_second']:,.0f} | "
            f"{e['p50_ms']:.1f} | {e['p99_ms']:.1f} | {e['requests_per_second'] / plain:.2f}x | {core_times(e)} | "
            f"{cores_allow(e, cores)} |"
            for e in http
        ]
        out += [
            "",
            f"tumor-infer spends {cores / plain * 1e3:.2f} core-ms per image ({cores} cores ÷ {plain:,.0f} img/s); "
            "the client here shares the same cores, so the last column (cores ÷ server and client core time) is "
            "the ceiling of this measurement, and its ratio to tumor-infer's rate the most the goal could reach here.",
            "",
        ]
    out += large_folder_lines(table["compact"])
    out += stage_lines(table["compact"])
    out += goal_lines(table["compact"], http)
    out += ["### Ratios that matter", ""]
    for model, v in values.items():
        if "onnx-int8" in v and "onnx-fp32" in v:
            f, i = v["onnx-fp32"], v["onnx-int8"]
            out.append(
                f"- {model}, ONNX int8 vs ONNX FP32: {ratio(f[0], i[0])} smaller, {ratio(f[1], i[1])} faster "
                f"single-image, {ratio(i[2], f[2])} batch throughput, F2 difference "
                f"{(i[4] - f[4]) if None not in (i[4], f[4]) else float('nan'):+.4f}"
            )
    c = values.get("compact", {})
    if "onnx-int8" in c and "baseline-int8" in c:
        n, b = c["onnx-int8"], c["baseline-int8"]
        out.append(
            f"- shipped ONNX int8 vs the previous shipped int8 (baseline-int8): {ratio(n[0], b[0], '{:.2f}x')} "
            f"the size, {ratio(b[1], n[1], '{:.2f}x')} single-image speed (1 thread), "
            f"{ratio(n[2], b[2], '{:.2f}x')} batch throughput, "
            f"{ratio(n[3], b[3], '{:.2f}x') if None not in (n[3], b[3]) else 'n/a'} tumor-infer end to end "
            "(decode, crop, resize and model, all cores)"
        )
    if "compact" in values and "alexnet" in values:
        c, a = values["compact"].get("onnx-int8"), values["alexnet"].get("torch-dynamic-int8")
        if c and a:
            out.append(
                f"- shipped ONNX int8 vs the reference's AlexNet dynamic int8: {ratio(a[0], c[0])} smaller, "
                f"{ratio(a[1], c[1])} faster single-image, {ratio(c[2], a[2])} batch throughput"
            )
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
