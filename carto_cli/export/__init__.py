"""What the next training run consumes: prune manifests and weight files (`manifests`), and the
samplers that read them (`sampling`)."""
