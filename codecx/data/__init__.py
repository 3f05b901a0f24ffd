"""codecx.data."""

from codecx.data.datamodule import (
    ImageDataModule,
    ImageFolderDataset,
    list_images,
    sample_image_paths,
    skimage_data_dir,
)

__all__ = ["ImageDataModule", "ImageFolderDataset", "list_images", "sample_image_paths", "skimage_data_dir"]
