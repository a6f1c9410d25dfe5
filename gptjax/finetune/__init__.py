"""Fine-tuning on the shared trainer: GPT-1's input transformations (`transforms`) and task heads (`heads`); what
is trained (`tasks`: classification with the auxiliary LM loss, and instruction tuning with a response-only loss
over packed rows); LoRA adapters (`lora`); labelled data from JSONL, TFDS and the embedded plays, and its encoding
for both kinds (`data`); and the run that `gptjax train` dispatches to when a config has a `finetune` section
(`run`)."""
