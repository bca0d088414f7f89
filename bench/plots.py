"""PNG plots of benchmark JSON (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GIB = 2**30


def plot(path: Path) -> list[Path]:
    data = json.loads(path.read_text())
    kind = path.stem
    if kind == "memory":
        return _memory(data, path)
    if kind in ("decode", "longform"):
        return _decode(data, path)
    if kind.startswith("serve"):
        return _serve(data, path)
    return []


def _memory(data: dict, path: Path) -> list[Path]:
    rows = [r for r in data["rows"] if r["ssm_dtype"] == "float32"]
    out = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    top = max(r["streams"] for r in rows)
    ctx = 4096 if any(r["context"] == 4096 for r in rows) else max(r["context"] for r in rows)
    for name in dict.fromkeys(r["preset"] for r in rows):
        a = sorted((r for r in rows if r["preset"] == name and r["streams"] == top), key=lambda r: r["context"])
        axes[0].plot([r["context"] for r in a], [r["peak_bytes"] / GIB for r in a], marker="o", label=name)
        b = sorted((r for r in rows if r["preset"] == name and r["context"] == ctx), key=lambda r: r["streams"])
        axes[1].plot([r["streams"] for r in b], [r["peak_bytes"] / GIB for r in b], marker="o", label=name)
    axes[0].set(xscale="log", xlabel="context (tokens)", ylabel="peak GPU memory (GiB)",
                title=f"{top} streams, fp32 SSM state")
    axes[1].set(xscale="log", xlabel="concurrent streams", ylabel="peak GPU memory (GiB)",
                title=f"{ctx}-token contexts, fp32 SSM state")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data['environment'].get('card', data['environment']['device'])} — {data['environment']['date']}")
    png = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    out.append(png)
    return out


def _decode(data: dict, path: Path) -> list[Path]:
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pos = sorted({r["position"] for r in rows})[len({r["position"] for r in rows}) // 2]
    for name in dict.fromkeys(r["preset"] for r in rows):
        for graph in (False, True):
            sel = sorted((r for r in rows if r["preset"] == name and r["cuda_graph"] == graph
                          and r["position"] == pos), key=lambda r: r["batch"])
            if sel:
                ax.plot([r["batch"] for r in sel], [r["step_seconds"] * 1e3 for r in sel], marker="o",
                        linestyle="-" if graph else "--", label=f"{name}{' graph' if graph else ' eager'}")
    ax.set(xscale="log", yscale="log", xlabel="batch (streams)", ylabel="decode step (ms)",
           title=f"decode step at position {pos}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [png]


def _serve(data: dict, path: Path) -> list[Path]:
    """Four panels vs concurrent clients, one line per model: time to first audio, inter-chunk gaps, underruns,
    real-time factor per stream."""
    if not any(run["levels"] for run in data["runs"]):
        return []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ttfa, gap), (under, rtf) = axes
    for k, run in enumerate(data["runs"]):
        color = f"C{k}"
        lv = sorted(run["levels"], key=lambda r: r["clients"])
        n = [r["clients"] for r in lv]

        def series(key, q):
            return [r[key][q] if r[key][q] is not None else float("nan") for r in lv]

        for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
            ttfa.plot(n, [v * 1e3 for v in series("ttfa_s", q)], style, color=color, marker="o", ms=3,
                      label=f"{run['model']} {q}")
        for q, style in (("p95", "--"), ("max", "-")):
            gap.plot(n, [v * 1e3 for v in series("gap_s", q)], style, color=color, marker="o", ms=3,
                     label=f"{run['model']} {q}")
        under.plot(n, [r["underruns"]["stall_s"] / max(r["requests"]["completed"], 1) for r in lv], "-",
                   color=color, marker="o", ms=3, label=f"{run['model']}")
        rtf.plot(n, series("x_realtime_per_stream", "p50"), "-", color=color, marker="o", ms=3,
                 label=f"{run['model']} p50")
        rtf.plot(n, series("x_realtime_per_stream", "p5"), "--", color=color, marker="o", ms=3,
                 label=f"{run['model']} p5")
    rtf.axhline(1.0, color="k", lw=0.8)
    ttfa.set(xscale="log", yscale="log", ylabel="time to first audio (ms)", title="time to first audio")
    gap.set(xscale="log", yscale="log", ylabel="inter-chunk gap (ms)", title="gaps between audio chunks")
    under.set(xscale="log", ylabel="stalled seconds per request", title="player underruns (stall time)")
    rtf.set(xscale="log", ylabel="audio s per wall s, per stream", title="real-time factor per stream (> 1: ok)")
    levels = sorted({r["clients"] for run in data["runs"] for r in run["levels"]})
    for ax in axes.flat:
        ax.set_xlabel("concurrent clients")
        ax.set_xticks(levels, [str(n) for n in levels], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    env = data.get("environment", {})
    fig.suptitle(f"mamtra bench serve — {env.get('card') or env.get('cpu') or env.get('device')} — {env.get('date')}")
    png = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [png]
