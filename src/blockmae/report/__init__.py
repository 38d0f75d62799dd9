"""Reports: a study (arms x seeds x milestones) read from a sweep or the registry, turned into one
Document, rendered as offline HTML and markdown with every table exported (docs/report.md).

- model: Study / Arm / SeedRun / EvalResult, read from sweep.json or the registry;
- stats: Wilson and t intervals, paired t and sign-flip tests, McNemar;
- document, render_html, render_md, exports, write: the one rendering path of every report;
- analysis: a study's sections; encoders: the quickstart's single-seed comparison of encoders.
"""

from blockmae.report.stats import Interval, wilson_interval

__all__ = ["Interval", "wilson_interval"]
