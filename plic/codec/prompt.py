"""The prompt of a ``.plic`` file: its one length limit, how text is cleaned into a prompt, and
how one text is split into the prompts of a batch. The encoder (plic.codec.pack), the captioners
(plic.caption) and PLIC Pack all use these."""

from __future__ import annotations

from plic.errors import PlicInputError

#: Prompts are cut to this many characters before use (reference).
MAX_PROMPT_CHARS = 240


def clean_prompt(text: str | None, limit: int = MAX_PROMPT_CHARS) -> str:
    """Collapse whitespace and cut at a word boundary to at most ``limit`` characters
    (1..:data:`MAX_PROMPT_CHARS`, PlicInputError otherwise). None is no prompt: ""."""
    limit = check_prompt_limit(limit)
    text = " ".join(("" if text is None else str(text)).split())
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut[:limit].rstrip(" ,;:")


def check_prompt_limit(limit: int) -> int:
    """``limit`` unless it is outside 1..:data:`MAX_PROMPT_CHARS`, the one prompt limit every
    captioner and PLIC Pack applies (PlicInputError)."""
    if not 1 <= int(limit) <= MAX_PROMPT_CHARS:
        raise PlicInputError(f"prompt limit {limit} is outside 1..{MAX_PROMPT_CHARS}: a .plic prompt "
                             f"holds at most {MAX_PROMPT_CHARS} characters")
    return int(limit)


def split_prompts(text: str, count: int) -> list[str]:
    """Prompts for a batch of ``count`` images from one STRING: one line per image, or a single
    line (or empty text) used for every image; one image takes the whole text. The caption node
    joins its prompts this way."""
    if count == 1:  # a single image takes the whole text, however many lines it has
        return [str(text)]
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) <= 1:
        return [lines[0] if lines else ""] * count
    if len(lines) != count:
        raise PlicInputError(f"the prompt has {len(lines)} lines for {count} images: give one line "
                             f"per image, or a single line for all of them")
    return lines
