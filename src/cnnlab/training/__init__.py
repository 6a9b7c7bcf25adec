"""Training: every pre-training decision made once (`plan`), the loop (`fit`), heads on frozen features
(`head`), transfer-learning strategies (`transfer`), the epoch budget (`budget`), the measured precision
(`precision`), the flip check (`flips`) and TensorBoard curves (`tensorboard`)."""
