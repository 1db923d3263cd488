"""Object detection (paper Sec. 4.2): RetinaNet on COCO."""
