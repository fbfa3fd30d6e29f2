"""What a person looks at: the data map (`maps`; Matplotlib, the `plot` extra, is imported only
when a map is drawn) and the samples behind a quadrant with their texts (`inspect`)."""
