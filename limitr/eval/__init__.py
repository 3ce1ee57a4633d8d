"""Evaluation: embed the evaluation tables once, score them blockwise with the model's one
similarity function, and measure retrieval, class retrieval, zero-shot classification and
phrase grounding.

- :mod:`limitr.eval.metrics`: ranks, recalls, MRR, Precision@K, AUROC from score matrices;
- :mod:`limitr.eval.grounding`: maps back to original pixels; CNR, IoU, pointing game;
- :mod:`limitr.eval.scoring`: the full score matrix in blocks from saved embeddings;
- :mod:`limitr.eval.store`: saved embeddings (safetensors) written and read;
- :mod:`limitr.eval.embed`: the encoders over the test split, tables and prompts;
- :mod:`limitr.eval.evaluate`, :mod:`limitr.eval.grounding_task`: the four tasks;
- :mod:`limitr.eval.prompts`: class and zero-shot prompts; :mod:`limitr.eval.plots`: figures.
"""
