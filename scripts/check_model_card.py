"""Read a model folder's README.md with huggingface_hub's ModelCard parser (as the Hub does).

Usage: python scripts/check_model_card.py MODEL_DIR

Prints one JSON object: the card's metadata (`card.data.to_dict()`), its evaluation results as
huggingface_hub parsed them from `model-index` ([{task_type, dataset_name, metric_type,
metric_value}, ...]) and the body's text. Fails if the card does not parse.
"""
import json
import os
import sys

from huggingface_hub import ModelCard

card = ModelCard.load(os.path.join(sys.argv[1], "README.md"))
results = [
    {
        "task_type": r.task_type,
        "dataset_name": r.dataset_name,
        "metric_type": r.metric_type,
        "metric_value": r.metric_value,
    }
    for r in (card.data.eval_results or [])
]
print(json.dumps({"data": card.data.to_dict(), "eval_results": results, "text": card.text}))
