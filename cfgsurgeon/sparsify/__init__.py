"""Magnitude pruning with TF Model Optimization: layer selection (``selection``, no TensorFlow), the
TFMOT pruning itself (``magnitude``), fine-tuning with a YOLO loss (``finetune``) and the compression report
(``report``). Import the submodules; this package imports nothing heavy."""
