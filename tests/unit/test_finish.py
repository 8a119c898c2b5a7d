"""The end-of-sweep summary: what the terminal and the MLflow parent run say about the fit."""
from analysis.fit import Fit
from orchestrator.finish import Summary
from store.layout import sweep_paths


def test_a_fit_over_checkpoints_that_span_no_test_accuracy_is_a_sentence_not_an_r2():
    """A curation round's follow-up runs all end near one test accuracy: R² against y = x over them is a huge
    negative number that reads as a result. The summary says why there is no fit instead."""
    flat = Summary(Fit(0.2, 0.4, -0.5, 6, -220.063), 0.1, 6, (0.500, 0.520), None, {}, ok=True)
    text = flat.text("sqlite:///x", sweep_paths("/tmp/x", "s"))
    assert "R² =" not in text and "-220" not in text
    assert "no fit: test accuracy spans only 0.500 .. 0.520 across these 6 checkpoints of 6 trials" in text
    assert "no fit: test accuracy spans only" in flat.description(sweep_paths("/tmp/x", "s"), None)
    spread = Summary(Fit(0.9, 0.01, 0.93, 24, 0.91), 0.1, 6, (0.02, 0.45), None, {}, ok=True)
    assert "premem R² = 0.910 against y = x" in spread.text("sqlite:///x", sweep_paths("/tmp/x", "s"))
