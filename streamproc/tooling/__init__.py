"""Tools beside the worker, never on its path: the evaluation of the briefs (`evaluation/`)."""
