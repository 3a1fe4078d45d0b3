"""Evaluation of a candidate adapter against the base model (DESIGN.md step 4): metrics
(``metrics``), general-ability probes (``probes.jsonl``), safety checks and canaries (``safety``),
the run and its verdict (``run``) and the report's Markdown and charts (``report``)."""
