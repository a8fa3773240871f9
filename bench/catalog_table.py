# ruff: noqa: E501  (the human table is wide on purpose)
"""The human table of ``bench_catalog.py``: one block of lines per phase, from its JSON."""

from __future__ import annotations

from typing import Any

from workload import GiB, KiB


def g(b: float) -> str:
    """Bytes as GB above 100 MB, else MB (decimal units, as the figures are)."""
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.2f} MB"


def _write(res: dict[str, Any]) -> list[str]:
    w = res["write"]
    out = [
        f"== write: full backup of {g(w['image_bytes'])} image, {w['block_size'] // KiB} KiB blocks  (RSS {w['rss_MiB']:.0f} MiB)",
        f"  generate content only        {w['generate_s']:7.2f} s",
        f"  baseline blake3+zstd-3 1 thr {w['baseline_s']:7.2f} s   net {w['baseline_net_GBps']:.2f} GB/s",
        f"  vmaccel full backup          {w['write_s']:7.2f} s   net {w['write_net_GBps']:.2f} GB/s (gross {w['write_gross_GBps']:.2f})",
        f"  baseline, same work 2 thr    {w['baseline2_s']:7.2f} s   net {w['baseline2_net_GBps']:.2f} GB/s"
        f"   ({w['ratio_baseline2_vs_baseline']:.2f} x 1 thr: ~1.9 when 2 cores are free)",
        f"  ratio vmaccel/baseline 2 thr {w['ratio_write_vs_baseline2']:7.2f} x",
        f"  2 thr, storing to one file   {w['baseline2_stored_s']:7.2f} s   "
        f"ratio vmaccel/it {w['ratio_write_vs_baseline2_stored']:.2f} x",
        f"  ratio vmaccel/baseline       {w['ratio_write_vs_baseline']:7.2f} x   "
        f"(CPU {w['write_cpu_s']:.2f} s vs {w['baseline_cpu_s']:.2f} s; load avg {w['load_avg']:.1f})",
        f"  stored {g(w['stored_bytes'])} (baseline {g(w['baseline_stored_bytes'])}), {w['zero_blocks']} zero blocks, "
        f"{w['map_nodes']} map nodes = {g(w['map_node_bytes'])}, index.db {g(w['index_db_bytes'])}",
    ]
    return out


def _rewrite(res: dict[str, Any]) -> list[str]:
    r = res["rewrite"]
    out = [
        f"== rewrite: the same image again as a child (hash compare, no CBT)  (RSS {r['rss_MiB']:.0f} MiB)",
        f"  generate content only        {r['generate_s']:7.2f} s",
        f"  baseline zero+blake3 1 thr   {r['baseline_s']:7.2f} s   gross {r['baseline_gross_GBps']:.2f} GB/s",
        f"  vmaccel rewrite              {r['rewrite_s']:7.2f} s   gross {r['rewrite_gross_GBps']:.2f} GB/s",
        f"  ratio vmaccel/baseline       {r['ratio_rewrite_vs_baseline']:7.2f} x (gross)   "
        f"(CPU {r['rewrite_cpu_s']:.2f} s vs {r['baseline_cpu_s']:.2f} s; load avg {r['load_avg']:.1f})",
        f"  new chunks {r['new_chunks']}, stored {r['stored_bytes']} B, new map nodes {r['new_nodes']}",
    ]
    if w := res.get("_full"):  # the write phase of the same run
        out.append(
            f"  rewrite vs full write        {r['rewrite_gross_GBps'] / w['write_gross_GBps']:7.2f} x faster (gross)"
        )
    return out


def _synth(res: dict[str, Any]) -> list[str]:
    s = res["synth"]
    out: list[str] = []
    out.append(f"== synthetic full from the full backup  (RSS {s['rss_MiB']:.0f} MiB)")
    if "big_bytes" in s:
        out.append(
            f"  sparse full of {s['big_bytes'] / GiB:.0f} GiB disk with {g(s['big_data_bytes'])} data: {s['big_full_s']:.2f} s"
        )
    z = s["nochange_4g"]
    out.append(
        f"  1 block changed ({g(s['image_bytes'])} disk): {z['seconds'] * 1000:.1f} ms, {z['new_nodes']} nodes, {z['node_bytes']} B"
    )
    out.append("  change  disk     changed   seconds  data MB/s  nodes  node bytes  sqlite growth")
    for c in s["cases"]:
        for label in ("small", "big"):
            if label not in c:
                continue
            r = c[label]
            name = g(s["image_bytes"]) if label == "small" else f"{s['big_bytes'] / GiB:.0f} GiB"
            out.append(
                f"  {c['pct']:5.1f}%  {name:>8} {g(r['changed_bytes']):>9} {r['seconds']:8.3f} "
                f"{r['changed_bytes'] / r['seconds'] / 1e6:9.0f} {r['new_nodes']:6d} {r['node_bytes']:11d} {r['sqlite_growth']:11d}"
            )
        if "ratio_time" in c:
            out.append(
                f"         ratio sparse/small: time {c['ratio_time']:.2f}, node bytes {c['ratio_node_bytes']:.2f}"
            )
    return out


def _read(res: dict[str, Any]) -> list[str]:
    r = res["read"]
    out = [
        f"== sequential read, 1 MiB readinto  (RSS {r['rss_MiB']:.0f} MiB)",
        f"  raw file (page cache) {r['raw_GBps']:6.2f} GB/s   ImageReader {r['image_GBps']:6.2f} GB/s   "
        f"slower by {r['ratio_raw_vs_image']:.1f} x   (CPU {r['image_cpu_s']:.2f} s; load avg {r['load_avg']:.1f})",
    ]
    return out


def _random(res: dict[str, Any]) -> list[str]:
    r = res["random"]
    out: list[str] = []
    out.append(
        f"== random 4 KiB preads of data blocks  (RSS {r['rss_MiB']:.0f} MiB, load avg {r['load_avg']:.1f})"
    )
    for k in ("no_cache_cold", "no_cache_warm", "cache_64MiB_warm"):
        out.append(f"  {k:16} {r[k]['reads_per_s']:9.0f} reads/s ({r[k]['reads']} reads)")
    out.append("  (cold: the repository's files evicted from the page cache before every read)")
    return out


def _blocksize(res: dict[str, Any]) -> list[str]:
    b = res["blocksize"]
    out: list[str] = []
    out.append(
        f"== block size trade-off, {g(b['image_bytes'])} image  (RSS {b['rss_MiB']:.0f} MiB)"
    )
    out.append(
        "  block    write GB/s  stored      map nodes  map bytes   0.1%-as-4KiB inc: blocks read  stored  node bytes"
    )
    for x in b["rows"]:
        out.append(
            f"  {x['block_size'] // KiB:5d}K {x['write_GBps']:10.2f}  {g(x['stored_bytes']):>10} {x['map_nodes']:9d} "
            f"{x['map_node_bytes']:10d}   {x['inc_blocks']:6d} {g(x['inc_read_bytes']):>9} {g(x['inc_stored_bytes']):>9} {x['inc_node_bytes']:9d}"
        )
    return out


_PHASES = {
    "write": _write,
    "rewrite": _rewrite,
    "synth": _synth,
    "read": _read,
    "random": _random,
    "blocksize": _blocksize,
}


def table(res: dict[str, Any]) -> list[str]:
    """The lines of every phase present in ``res`` (``_full``: the write phase of the same run,
    for the rewrite-vs-write ratio)."""
    return [line for name, fn in _PHASES.items() if res.get(name) for line in fn(res)]
