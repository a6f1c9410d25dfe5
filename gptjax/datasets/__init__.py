"""TFDS dataset builders owned by gptjax, one package per dataset (`<name>/<name>_dataset_builder.py`, class
`Builder`). Importing a builder module registers it, so `tfds.data_source(name)` finds it too. They build to
array_record and read back without TensorFlow."""
