"""Where and how scoring runs: the planner picks the kernel and the engine once (`plan`), then the
log is reduced in memory (`local`), bucket by bucket (`buckets`), as Ray tasks (`ray`) or by folding
new parts into a saved state (`incremental`); `pipeline` is `carto score` end to end."""
