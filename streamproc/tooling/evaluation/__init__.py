"""Brief quality on the labelled sets: `python -m streamproc.tooling.evaluation` (see cli).

One module per step, in the order a run takes them:

- load: the labelled sets (the built-in splits, one set's events and labels, its "now");
- cases: cases built from a set's events as the worker builds them, and briefed;
- support: the oracle "the cited events show what the fact states";
- score: the metrics of one split, per case and per kind (injections included);
- gates: hard zeros, absolute minimums, regressions against the stored baseline;
- report: the markdown report of a split and the quality card across modes;
- claims: the claim checker on a hallucination corpus;
- compare: two variants side by side (`python -m streamproc.tooling.evaluation.compare`);
- cli: the command line, which writes the reports and the quality card.
"""
