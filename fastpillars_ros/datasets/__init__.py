"""Dataset readers (KITTI layout) shared by training and evaluation."""
