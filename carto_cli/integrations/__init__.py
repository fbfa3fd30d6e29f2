"""Integrations: carto's logger inside the training frameworks people already use.

Each module adapts `CartoLogger` (carto_cli.log) to one framework and imports that framework at the
top, so importing `carto_cli` never loads them: `hf` (transformers' Trainer, run by Accelerate),
`lightning` (a Lightning callback) and `distributed` (torchrun, DDP and Accelerate loops: one writer
per rank, the padding duplicates of distributed samplers left out). Nothing in the package imports
this one; it is for training scripts, examples and tests.
"""
