"""Grouping a token stream into text pieces and ModalitySpans (shared by ids and strings)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from anygpt_jax.vocab.registry import Modality, ModalitySpan, Segment

Unit = tuple[int | None, str | None]  # (token id or None for text, matched text or None)


def group_segments(
    units: list[Unit],
    modalities: Iterable[Modality],
    strict: bool,
    flush_text: Callable[[list[Unit], bool], str],
) -> list[Segment]:
    """Cuts units at start/end markers; flush_text(run, at_start) renders a run of text units.

    strict: unterminated spans, stray code ids or end markers raise ValueError; otherwise an
    open span closes where its codes stop and stray ids stay text.
    """
    modalities = list(modalities)
    starts = {m.start_id: m for m in modalities}
    ends = {m.end_id: m for m in modalities}

    def code_of(tid: int) -> Modality | None:
        return next((m for m in modalities if m.first_id <= tid < m.stop_id), None)

    out: list[Segment] = []
    run: list = []

    def emit_text():
        if run:
            s = flush_text(run, not out)
            if s:
                if out and isinstance(out[-1], str):
                    out[-1] += s
                else:
                    out.append(s)
            run.clear()

    def where(p: int, u) -> str:
        return f"{u[1]!r} at item {p}" if u[1] is not None else f"id {u[0]} at position {p}"

    p = 0
    while p < len(units):
        tid = units[p][0]
        if tid in starts:
            m, open_at = starts[tid], p
            codes: list[int] = []
            p += 1
            while p < len(units) and units[p][0] is not None and m.contains(units[p][0]):
                codes.append(units[p][0])
                p += 1
            closed = p < len(units) and units[p][0] == m.end_id
            if not closed and strict:
                got = "the end" if p == len(units) else where(p, units[p])
                raise ValueError(
                    f"malformed {m.name} span: {m.start_token} at item "
                    f"{open_at} is not closed by {m.end_token} before {got}"
                )
            emit_text()
            out.append(ModalitySpan(m.name, m.ids_to_codes(codes, strict=strict)))
            p += 1 if closed else 0
            continue
        if strict and tid is not None and (tid in ends or code_of(tid)):
            m = ends.get(tid) or code_of(tid)
            raise ValueError(
                f"malformed {m.name} span: {where(p, units[p])} outside "
                f"{m.start_token}...{m.end_token}"
            )
        run.append(units[p])
        p += 1
    emit_text()
    return out
