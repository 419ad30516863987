"""Hair removal before segmentation (`predict.py --remove-hair`, `evaluate.py --remove-hair`).

Thin dark lines are found with a morphological black-hat filter (greyscale closing minus the image)
and painted over from the skin around them (OpenCV's Telea inpainting), the classic "DullRazor"
recipe of Lee et al. (1997). Under the generalisation protocol (README, "Hair removal") it lifts the
shipped model's Dice on images with dense dark hair from 0.875 to 0.904 and changes nothing
measurable on the other conditions (+0.0002), so it is an option, off by default.

The filter runs at `WORKING_SIDE` pixels on the long side, the resolution it was measured at (the ISIC
copy's 256x192), so its element and threshold mean the same on a phone photo as on the data.
"""

import numpy as np
from PIL import Image

from lesion_unet import lesion_files

WORKING_SIDE = 256  # long side (pixels) the filter runs at; smaller images run at their own size
# At 256x192, a hair is 1-3 pixels thick: a 7-pixel element closes it, while a lesion, tens of pixels
# across, is left alone.
KERNEL_PIXELS = 7
# The black-hat response (grey levels) that counts as hair. Chosen from 15, 30 and 50 on 300 training
# images (not the validation split): lower levels also took a lesion's own dark network and dots, and
# cost Dice on the unshifted and darkened images (-0.0028 at 15).
HAIR_LEVEL = 50
INPAINT_RADIUS = 3  # pixels at 256x192: the neighbourhood each painted pixel is taken from


def hair_mask(image, level=HAIR_LEVEL):
    """Where `image` has thin dark lines: the black-hat response with a cross-shaped element of
    `KERNEL_PIXELS` (scaled with the long side from 256), at least `level`, dilated by one pixel.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        level: the black-hat response (grey levels) that counts as hair.

    Returns:
        `uint8` array `(h, w)`: 255 on hair, 0 elsewhere (OpenCV's inpainting mask).
    """
    import cv2

    scale = max(image.shape[:2]) / WORKING_SIDE
    size = 2 * max(1, round(KERNEL_PIXELS * scale / 2)) + 1  # odd, at least 3
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_CROSS, (size, size)))
    mask = np.where(blackhat >= level, 255, 0).astype(np.uint8)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8))


def remove_hair(image, level=HAIR_LEVEL):
    """Paints over `hair_mask`'s pixels from their surroundings (Telea inpainting).

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        level: `hair_mask`'s threshold.

    Returns:
        A new `uint8` RGB array of the same shape; pixels off the hair mask are unchanged.
    """
    import cv2

    radius = max(1, round(INPAINT_RADIUS * max(image.shape[:2]) / WORKING_SIDE))
    return cv2.inpaint(np.ascontiguousarray(image), hair_mask(image, level), radius, cv2.INPAINT_TELEA)


def working_size(image_size):
    """`(height, width)` with the long side at most `WORKING_SIDE`, the aspect ratio kept."""
    height, width = image_size
    scale = min(1.0, WORKING_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def without_hair(image, level=HAIR_LEVEL):
    """What `--remove-hair` does to an image: shrunk to `working_size` if larger, then `remove_hair`.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        level: `hair_mask`'s threshold.

    Returns:
        A new `uint8` RGB array at `working_size(image.shape[:2])`.
    """
    size = working_size(image.shape[:2])
    if size != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)
    return remove_hair(image, level)


def description():
    """What `--remove-hair` does, in words, for the pipeline description beside an exported model."""
    return (f"optional, off by default (predict.py --remove-hair): before the resize, shrink the image to at most "
            f"{WORKING_SIDE} px on its long side; find hair as the grey image's black-hat response (closing minus "
            f"image, a {KERNEL_PIXELS}-px cross at {WORKING_SIDE} px) of at least {HAIR_LEVEL} grey levels, dilated "
            f"by a 3x3 square; paint those pixels over with Telea inpainting (OpenCV, radius {INPAINT_RADIUS} px); "
            "the mask is then made at the image's own size as below")


def read_image_without_hair(path, size):
    """Reads an image at `working_size` (large JPEGs decoded at reduced scale), `without_hair`, and
    resizes it to `size`.

    Args:
        path: image file.
        size: `(height, width)`: the model's input size.

    Returns:
        A `uint8` RGB array of shape `(height, width, 3)`.

    Raises:
        InputError: the file is missing, truncated or not an image.
    """
    image = without_hair(lesion_files.read_image(path, working_size(lesion_files.image_size_of(path))))
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)
