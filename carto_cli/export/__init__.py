"""What the next training run consumes: prune manifests and weight files (`manifests`), the
samplers that read them (`sampling`), and the ids a subset of a dataset keeps (`subsets`)."""
