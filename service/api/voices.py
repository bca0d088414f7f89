"""Voice and model names: bundled ids, and OpenAI's names mapped onto them so existing clients work unchanged.

OpenAI voice names map deterministically onto the bundled voices, by gender where the voices say theirs:
OpenAI's feminine-sounding voices (coral, nova, sage, shimmer, marin) go round-robin over the bundled female voices,
the masculine ones (ash, ballad, echo, fable, onyx, verse, cedar) over the male voices, and ``alloy`` (neutral) and
any name without a same-gender voice over all voices; bundled voices are taken in id order. The same voice list
always gives the same mapping; ``GET /v1/voices`` lists each voice's ``aliases``. A bundled voice whose id equals an
OpenAI name wins over the alias.
"""

from __future__ import annotations

from service.engine.types import Voice

OPENAI_VOICES: dict[str, str | None] = {  # name -> gender used for the mapping (None: any)
    "alloy": None, "ash": "male", "ballad": "male", "coral": "female", "echo": "male", "fable": "male",
    "onyx": "male", "nova": "female", "sage": "female", "shimmer": "female", "verse": "male",
    "marin": "female", "cedar": "male",
}

# Model ids OpenAI clients send; all of them run the engine's (single) model.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20",
                        "gpt-4o-mini-tts-2025-12-15")


def alias_map(voices: list[Voice]) -> dict[str, str]:
    """OpenAI voice name -> bundled voice id."""
    ordered = sorted(voices, key=lambda v: v.id)
    if not ordered:
        return {}
    ids = {v.id for v in ordered}
    pools: dict[str | None, list[Voice]] = {None: ordered}
    for gender in ("female", "male"):
        pools[gender] = [v for v in ordered if (v.gender or "").lower() == gender] or ordered
    taken = {key: 0 for key in pools}
    mapping = {}
    for name, gender in OPENAI_VOICES.items():
        if name in ids:
            continue
        pool = pools[gender]
        mapping[name] = pool[taken[gender] % len(pool)].id
        taken[gender] += 1
    return mapping


def aliases_by_voice(voices: list[Voice]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {v.id: [] for v in voices}
    for name, voice_id in alias_map(voices).items():
        out[voice_id].append(name)
    return out


def resolve_voice(name: str, voices: list[Voice]) -> str | None:
    """A bundled voice id for ``name`` (an id, or an OpenAI name), or None."""
    if any(v.id == name for v in voices):
        return name
    return alias_map(voices).get(name.lower())


def model_ids(engine_ids: list[str]) -> list[str]:
    return list(dict.fromkeys([*engine_ids, *OPENAI_MODEL_ALIASES]))
