"""The project's names and defaults, in one place that imports without Keras.

The command-line tools build their parsers from these, so `--help` and argument errors answer
before Keras (and TensorFlow) load; the library modules take their defaults from here too, so each
default has one definition.
"""

import os

# The ISIC layout: images/<id>.<ext> with masks/<id>_segmentation.png.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_segmentation.png"

# Data and training.
DEFAULT_IMAGE_SIZE = (128, 128)
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
# How `train.py --folds` cuts the pairs: seeded random parts, or runs of consecutive ids (`--fold-by`).
FOLD_ORDERS = ("random", "order")
DEFAULT_ZOOM = (0.8, 1.4)  # zooms in more than out: large lesions, the failures on other sources, get common
COLOR_AUGMENTATIONS = ("light", "strong")
LOSSES = ("dice_bce", "dice", "bce")
# The Dice term's weight of missed lesion pixels: 0.5 is plain soft Dice (see losses.soft_tversky_loss).
DEFAULT_FN_WEIGHT = 0.5
# Per-image, per-channel standardization inside the model (model_improved.standardized_image).
DEFAULT_INPUT_NORM = False
MODELS = ("basic", "improved")
DISTRIBUTION_MODES = ("auto", "off", "mirrored", "multi-worker")
REAL_DATA_EPOCHS = 30
# The whole run, start to test report, on real data: a slower machine trains fewer epochs.
REAL_DATA_TIME_BUDGET_MINUTES = 90
DEMO_EPOCHS = 8
DEMO_SAMPLES = 240

# Inference.
# The PNG "Software" text that predict.py and the web app write into their masks and overlays, so that
# predict.py replaces its own earlier outputs but never a file it did not write (an expert mask).
OUTPUT_PNG_SOFTWARE = "lesion-unet"
# The project's folder (the package's parent): the pre-trained model lies in its pretrained/.
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(PROJECT_DIR, "pretrained", "improved_unet.keras")
DEFAULT_TTA = False
DEFAULT_POSTPROCESS = True
DEFAULT_REMOVE_HAIR = False  # an option: it helps on dense hair only (README, "Hair removal")
DEFAULT_THRESHOLD = 0.5


def image_id_of(name):
    """Returns the id of an image file name (`ISIC_001.JPG` -> `ISIC_001`), or `None` if not an image."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else None


def is_usable_file(path):
    """Whether `path` is a regular file (through links) and not hidden: the one rule for what every
    tool reads from a folder. Folders named like images, dangling links and link loops are not."""
    return not os.path.basename(path).startswith(".") and os.path.isfile(path)


def default_cache_dir():
    """Returns `$XDG_CACHE_HOME/lesion-unet`, or `~/.cache/lesion-unet`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "lesion-unet")
