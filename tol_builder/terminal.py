"""Third-party text on the terminal: never read as rich markup, never a raw control sequence.

Owns how a value from a file, a record or an error reaches the terminal. Rich reads a plain `str` as markup
(`[/]` raises MarkupError, `[link=...]` makes a hyperlink, `[sic]` disappears) and passes ESC sequences
through, so every such value goes through `safe_text`: a `rich.text.Text` (never parsed as markup) whose
control and bidirectional-formatting characters are shown as Python escapes (ESC as `\\x1b`, U+202E as
`\\u202e`). Newlines are kept where asked (multi-line error messages), shown as `\\n` elsewhere.
The project's own fixed words keep their style as a `style=` argument or a `(text, style)` part of `styled`,
never as markup in a string that also holds a value.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Union

from rich.text import Text

# C0 and C1 controls, DEL, and the bidi marks, embeddings, overrides and isolates (Trojan Source)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(value: object, newlines: bool = False) -> str:
    """`str(value)` with control and bidi characters replaced by their escapes (`\\x1b`, `\\u202e`)."""
    return (_UNSAFE_KEEP_NEWLINES if newlines else _UNSAFE).sub(_escape, str(value))


def safe_text(value: object, style: str = "", newlines: bool = False) -> Text:
    """A Text of `value` for rich (tables, console.print): shown as it is, markup characters included."""
    return Text(visible(value, newlines), style=style)


Part = Union[str, "tuple[str, str]", Text]


def styled(*parts: Part) -> Text:
    """One Text of `parts`, each shown as it is: a str plain, a `(text, style)` pair styled (the project's own
    words, e.g. `("warning:", "yellow")`), a Text as it was built (by `safe_text` or `styled`)."""
    return Text.assemble(*(p if isinstance(p, Text) else
                           safe_text(p[0], style=p[1]) if isinstance(p, tuple) else safe_text(p) for p in parts))


def say_to(console: Any) -> Callable[..., None]:
    """`say(message, style="")` printing `message` (a str, or a Text from `styled`) on `console` as text, one
    line however narrow the terminal; saying nothing when `console` is None."""
    if console is None:
        return lambda *a, **k: None

    def say(message: "str | Text", style: str = "") -> None:
        text = message if isinstance(message, Text) else safe_text(message, style=style)
        console.print(text, soft_wrap=True)

    return say
