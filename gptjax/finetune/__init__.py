"""Fine-tuning on the shared trainer: GPT-1's task heads with input transformations (`transforms`, `heads`,
`tasks`), instruction tuning with a response-only loss and packing (`sft`), LoRA adapters (`lora`), labelled data
from JSONL, TFDS and the embedded plays (`data`), and the run that `gptjax train` dispatches to when a config has
a `finetune` section (`run`)."""
