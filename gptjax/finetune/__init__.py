"""Fine-tuning's parts (the run itself is gptjax/runs/finetune.py): GPT-1's input transformations (`transforms`) and
task heads (`heads`); what is trained (`objectives`: classification with the auxiliary LM loss, and instruction
tuning with a response-only loss over packed rows); LoRA adapters (`lora`); labelled data from JSONL, TFDS and the
embedded plays, and its encoding for both kinds (`data`)."""
