"""PyTorch checkpoints of the Ultralytics family, read without their packages and without running pickled code
(:mod:`.pickled`): the YOLOv5 repository's models mapped onto plain darknet layers (:mod:`.yolov5`), the
``ultralytics`` package's YOLOv8 models onto darknet layers and the ``[anchor_free]`` head
(:mod:`.yolov8`)."""
