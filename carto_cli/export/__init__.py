"""What the next training run consumes: prune manifests and weight files (`manifests`), and the
samplers that read them (`sampling`); and the samples behind a quadrant or an id list, with their
texts, for a person to read before pruning (`inspect`)."""
