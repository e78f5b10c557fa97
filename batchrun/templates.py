"""`{name}` templates, for fixed text inputs and output file names.

`{name}` is replaced by a value; names may contain spaces (`{Aspect Ratio}`) and are
matched exactly. `{{` and `}}` stand for literal braces. There are no format specs: a
colon is just part of a name, because parameter names contain anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Fields the runner supplies when it names an output file; a spec cannot define them.
FILENAME_BUILTINS = frozenset(
    {"app", "app_id", "key", "repeat", "run_id", "output", "index", "ext"}
)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text alternating with field names."""

    text: str
    # Even positions: literals (braces unescaped); odd positions: field names.
    parts: tuple[str, ...]
    fields: frozenset[str]

    def render(self, values: Mapping[str, str]) -> str:
        """The text with every field replaced; KeyError names a field with no value."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = list(parts)
        for i in range(1, len(parts), 2):
            out[i] = values[parts[i]]
        return "".join(out)


def parse_template(text: str) -> Template:
    """Parse `text`; ValueError says what is wrong and where (1-based column)."""
    parts: list[str] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            opener = text.find("{", i + 1)
            if end == -1:
                raise ValueError(
                    f"unclosed '{{' at column {i + 1}; write '{{{{' for a literal brace"
                )
            if opener != -1 and opener < end:
                raise ValueError(
                    f"'{{' inside a field at column {opener + 1}; "
                    "write '{{' for a literal brace"
                )
            name = text[i + 1 : end]
            if not name:
                raise ValueError(
                    f"empty field '{{}}' at column {i + 1}; write '{{{{}}}}' for "
                    "literal braces"
                )
            parts.append("".join(literal))
            parts.append(name)
            literal = []
            i = end + 1
        elif char == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ValueError(
                f"single '}}' at column {i + 1}; write '}}}}' for a literal brace"
            )
        else:
            stop = _next_brace(text, i)
            literal.append(text[i:stop])
            i = stop
    parts.append("".join(literal))
    return Template(text=text, parts=tuple(parts), fields=frozenset(parts[1::2]))


def _next_brace(text: str, start: int) -> int:
    found = [p for p in (text.find("{", start), text.find("}", start)) if p != -1]
    return min(found) if found else len(text)
