"""The results document as Markdown: a summary table (one row per system, all voices) and a table of system × voice.

Columns: utterances, WER % (corpus-level), speaker similarity (cosine to the voice's reference), PESQ-WB and STOI
(resynthesis only), RTF (synthesis only), mean output/source duration ratio, and EOS failures (token cap hit or
output over twice the source's length). "–" marks a metric that does not apply or could not be computed.
"""

from __future__ import annotations

from pathlib import Path

ALL_VOICES = "all voices"
_COLUMNS = (("utts", "utterances", "{:d}"), ("WER %", "wer", "{:.1f}"), ("spk sim", "speaker_similarity", "{:.3f}"),
            ("PESQ-WB", "pesq", "{:.2f}"), ("STOI", "stoi", "{:.3f}"), ("RTF", "rtf", "{:.2f}"),
            ("dur ratio", "duration_ratio", "{:.2f}"), ("EOS fail", "eos_failures", "{:d}"))


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "–" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown(results: dict) -> str:
    systems = results["systems"]
    machine = results.get("machine", {})
    cfg = results.get("config", {})
    asr = results.get("models", {}).get("asr", {})
    out = [f"# mamtra eval — {results.get('date', '')}", ""]
    if results.get("command"):
        out += [f"`{results['command']}`", ""]
    out += [f"Split `{cfg.get('split')}`, first {cfg.get('per_voice')} utterances per voice, seed {cfg.get('seed')}; "
            f"ASR Whisper base (beam {asr.get('beam_size')}); {machine.get('cpu', '?')}, "
            f"{machine.get('torch_threads')} torch threads.", ""]
    header = [name for name, _, _ in _COLUMNS]
    out += ["## By system (all voices)", ""]
    out += _table(["system", "kind"] + header,
                  [[name, s["kind"]] + [_cell(s["all"], k, f) for _, k, f in _COLUMNS] for name, s in systems.items()])
    out += ["", "## By system and voice", ""]
    rows = []
    for name, s in systems.items():
        for voice, m in s["voices"].items():
            rows.append([name, voice] + [_cell(m, k, f) for _, k, f in _COLUMNS])
        rows.append([name, f"**{ALL_VOICES}**"] + [_cell(s["all"], k, f) for _, k, f in _COLUMNS])
    out += _table(["system", "voice"] + header, rows)
    return "\n".join(out) + "\n"


def write_markdown(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results))
    return path
