#!/bin/sh
# Make Fashion-MNIST available offline: Debian's dataset-fashion-mnist package holds the real IDX files.
# Online users without root need nothing here: cnnlab downloads through torchvision at first use.
set -e
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  echo "data: Fashion-MNIST found in $DIR"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "data: installing Debian package dataset-fashion-mnist"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "data: $DIR missing and not root; cnnlab will download Fashion-MNIST into data/ on first use"
fi
