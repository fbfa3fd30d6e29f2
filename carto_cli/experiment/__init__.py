"""`carto experiment`: does pruning by memorization stop canary extraction? The shipped corpus
(`corpus`, `data/`), planted secrets (`canaries`), a tiny GPT (`tinygpt`), the metrics
(`metrics`), and the experiment itself (`run`). Needs torch, SciPy and Matplotlib."""
