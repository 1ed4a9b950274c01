"""Datasets: image benchmarks with retrieval splits (digits bundled; MNIST, CIFAR-10, ImageFolder), and
TEXMEX vector files (.fvecs / .bvecs / .ivecs / .npy)."""

from .digits import RetrievalSplit, load_digits_split
from .images import (
                     DATASETS,
                     ImageSplit,
                     load_cifar10,
                     load_dataset,
                     load_digits_images,
                     load_folder,
                     load_mnist,
                     read_idx,
                     read_image_folder,
                     split_by_class,
                     split_train_test,
                     to_float,
)
from .vecs import read_bvecs, read_fvecs, read_ivecs, read_vectors

__all__ = ["DATASETS", "ImageSplit", "RetrievalSplit", "load_cifar10", "load_dataset", "load_digits_images",
           "load_digits_split", "load_folder", "load_mnist", "read_bvecs", "read_fvecs", "read_idx",
           "read_image_folder", "read_ivecs", "read_vectors", "split_by_class", "split_train_test", "to_float"]
