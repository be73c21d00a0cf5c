"""User text is shown exactly as it is, brackets included: never parsed as markup.

Textual reads a plain ``str`` as markup almost everywhere (``Static``/``Label`` updates, toasts,
``DataTable`` cells, ``Tree`` labels, ``OptionList`` prompts): a caption ``a [red] cat`` loses a
word, a folder ``my [set1] images`` loses ``[set1]`` and a ``[/]`` raises a MarkupError. Anything
that can hold a file name, a path, a caption, a config key or an engine message goes to a widget
through ``literal`` (or a rich ``Text`` built with ``append``, which is literal too).
"""

from __future__ import annotations

from rich.text import Text


def literal(value: object, style: str = "") -> Text:
    """``value`` as plain text for any widget: never read as markup."""
    return Text(str(value), style=style)


class PlainNotifications:
    """App mixin: every toast shows its message as plain text.

    Toasts quote paths, captions, problem hints and engine errors, and none of ours uses markup, so
    markup is off for all of them here instead of at each call site (``Widget.notify`` always passes
    ``markup=True`` on, which is why the argument is overruled rather than defaulted)."""

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        return super().notify(message, title=title, severity=severity, timeout=timeout,  # type: ignore[misc]
                              markup=False)
