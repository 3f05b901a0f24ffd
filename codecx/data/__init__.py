"""codecx.data."""

from codecx.data.datamodule import (
    ImageDataModule,
    check_images,
    ImageFolderDataset,
    list_images,
    sample_image_paths,
    skimage_data_dir,
)

from codecx.data.images import ImageReadError, oriented_size, read_rgb, to_rgb8

__all__ = ["ImageDataModule", "ImageReadError", "check_images", "oriented_size", "read_rgb", "to_rgb8",
           "ImageFolderDataset", "list_images", "sample_image_paths", "skimage_data_dir"]
