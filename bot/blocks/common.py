from __future__ import annotations

from slack_sdk.models.blocks import ContextBlock, MarkdownTextObject, SectionBlock

SECTION_LIMIT = 3000


def chunks(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Split text for section blocks, preferring line breaks, never over ``limit`` characters."""
    out: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    if text or not out:
        out.append(text)
    return out


def sections(text: str) -> list[SectionBlock]:
    return [SectionBlock(text=MarkdownTextObject(text=part or " ")) for part in chunks(text)]


def context(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=text[:3000])])
