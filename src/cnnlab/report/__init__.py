"""One self-contained HTML file per run (and per comparison of runs), plots embedded."""
