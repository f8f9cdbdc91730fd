"""``paratune bench quality``: the fair quality protocol (see ``protocol``), its data (``data``), methods
(``methods``), lm-eval scoring (``scoring``), statistics (``stats``) and report (``report``)."""

from __future__ import annotations

from .protocol import Protocol, QualityConfig, TimeBudgetReached


def run(cfg: QualityConfig, command: str, log=print, report_only: bool = False):
    """Run (or resume) the protocol, rewriting the report after every finished group; returns the report path.
    Stops cleanly at ``cfg.max_hours``."""
    from .report import write_report

    protocol = Protocol(cfg, log=log)
    if report_only:
        if not protocol.store.records:
            raise FileNotFoundError(f"no finished runs in {cfg.output}/runs.jsonl at scale {cfg.scale}")
        return write_report(protocol, command)
    try:
        protocol.run(after_group=lambda: write_report(protocol, command))
    except TimeBudgetReached:
        log(f"[quality] --max-hours {cfg.max_hours} reached; rerun the same command to resume")
    return write_report(protocol, command)


__all__ = ["Protocol", "QualityConfig", "TimeBudgetReached", "run"]
