"""Training: darknet-format datasets (``dataset``), the synthetic demo set (``synthetic``), mAP evaluation
(``evaluate``), the YOLO loss (``loss``) and the training loop (``trainer``).

Nothing outside this package imports it at module level: it needs torch (``synthetic`` and the scoring half of
``evaluate`` need only numpy and Pillow).
"""
