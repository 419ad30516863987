"""Loading a saved model safely, and turning images into lesion masks at their own size.

Shared by `evaluate.py`, `predict.py` and `train.py`: the model sees each image resized to its input
size; its probability map is resized back (bilinear) to the image's own size, then thresholded and,
optionally, post-processed.
"""

import json
import os
import zipfile

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from lesion_unet import hair_removal
from lesion_unet.lesion_files import encode_png, image_size_of, read_image
from lesion_unet.errors import InputError

# Serialized Python code in a .keras config: a Lambda layer, or a lambda passed as an argument.
CODE_CLASSES = ("Lambda", "__lambda__")


# What a `.keras` archive may unpack to. The project's largest model's config.json is about 60 kB and
# its weights 30 MB: these leave room for any U-Net while refusing a padded archive (a "zip bomb")
# before a byte of it is inflated.
MAX_KERAS_CONFIG_BYTES = 16 * 2**20      # config.json and metadata.json, each
MAX_KERAS_ARCHIVE_BYTES = 4 * 2**30      # every member together
MAX_KERAS_MEMBERS = 64


def check_keras_archive(path):
    """Checks a `.keras` file's zip directory before anything in it is read, then reads its `config.json`.

    Returns:
        The parsed `config.json`, or `None` when the archive has none or it is not JSON (Keras's own
        load then says what is wrong).

    Raises:
        InputError: not a zip archive, too many members, or members that would unpack to more than
            `MAX_KERAS_CONFIG_BYTES` (the JSON files) or `MAX_KERAS_ARCHIVE_BYTES` (all of them).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_KERAS_MEMBERS:
                raise InputError(f"{path}: refused: the archive holds {len(members)} files, not a saved Keras "
                                 "model's few")
            for member in members:
                if member.filename.endswith(".json") and member.file_size > MAX_KERAS_CONFIG_BYTES:
                    raise InputError(f"{path}: refused: its {member.filename} would unpack to "
                                     f"{member.file_size / 1e6:,.0f} MB (a saved model's is well under "
                                     f"{MAX_KERAS_CONFIG_BYTES / 1e6:.0f} MB)")
            total = sum(member.file_size for member in members)
            if total > MAX_KERAS_ARCHIVE_BYTES:
                raise InputError(f"{path}: refused: the archive would unpack to {total / 1e9:,.1f} GB, more than "
                                 f"any model these tools take ({MAX_KERAS_ARCHIVE_BYTES / 1e9:.1f} GB)")
            try:
                return json.loads(archive.read("config.json"))
            except (KeyError, ValueError, zipfile.BadZipFile):  # no config, or a damaged one
                return None
    except (OSError, zipfile.BadZipFile):
        raise InputError(f"{path}: not a Keras model (.keras files are zip archives); pass a .keras file") from None


def _carries_code(config):
    """Whether a `.keras` archive's parsed `config.json` holds serialized Python code (`CODE_CLASSES`),
    which safe mode refuses to run."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") in CODE_CLASSES:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class OnnxModel:
    """An exported model (`export.py`) run by ONNX Runtime, with the part of `keras.Model`'s interface
    that this module uses: `predict_on_batch`, `input_shape`, `output_shape`, `name`. Loading it
    imports neither Keras nor TensorFlow.

    Args:
        path: the `.onnx` file.

    Raises:
        InputError: ONNX Runtime is missing, or cannot read the file.
    """

    def __init__(self, path):
        try:
            import onnxruntime
        except ImportError:
            raise InputError(f"{path}: running an ONNX model needs ONNX Runtime; pip install onnxruntime") from None
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime's own error types; all mean "cannot use this file"
            raise InputError(f"{path}: cannot load this ONNX model ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{path}: the ONNX model has {len(inputs)} input(s) and {len(outputs)} output(s); "
                             "these tools take one image batch in and one mask out, as export.py writes")
        (source,), (result,) = inputs, outputs
        if source.type != "tensor(float)":
            raise InputError(f"{path}: the ONNX model takes {source.type}, not float32 images (tensor(float)); "
                             "export it with export.py")
        self.input_name = source.name
        self.input_shape = tuple(side if isinstance(side, int) else None for side in source.shape)
        self.output_shape = tuple(side if isinstance(side, int) else None for side in result.shape)
        self.name = os.path.splitext(os.path.basename(path))[0]

    def predict_on_batch(self, images):
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def _check_shapes(model, path):
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or tuple(model.output_shape)[-1] != 1:
        raise InputError(
            f"{path}: the model takes {model.input_shape} and gives {model.output_shape}; "
            "expected (batch, height, width, 3) RGB images and a (batch, height, width, 1) mask"
        )
    if None in shape[1:3]:
        raise InputError(f"{path}: the model takes images of any size; these tools need a model with a "
                         "fixed input size, as train.py saves")
    return model


def check_model_file(path):
    """Raises InputError unless `path` is an existing file: the check that needs no loading."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: model file not found; pass a .keras or .onnx file or a run folder")


def load_model(path):
    """Loads a `.keras` model with safe mode on, or an `.onnx` one with ONNX Runtime, checking that
    it takes RGB images of a fixed size.

    Args:
        path: a `.keras` file, or an `.onnx` file written by `export.py`.

    Returns:
        The `keras.Model`, uncompiled, or an `OnnxModel`.

    Raises:
        InputError: the file is missing, is not a model, carries code that safe mode refuses
            (a `Lambda` layer), does not map `(h, w, 3)` images to `(h, w, 1)` masks, or has no
            fixed input size.
    """
    check_model_file(path)
    if path.lower().endswith(".onnx"):
        return _check_shapes(OnnxModel(path), path)
    import keras

    if _carries_code(check_keras_archive(path)):
        raise InputError(
            f"{path}: refused: the model carries arbitrary code (e.g. a Lambda layer), which safe "
            "mode does not run; use a model built from this project's layers"
        )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types here; all mean "cannot use this file".
        text = str(error)
        raise InputError(f"{path}: cannot load this Keras model ({type(error).__name__}: "
                         f"{text.splitlines()[0] if text else ''})") from None
    if not all(np.isfinite(weight).all() for weight in model.get_weights()):
        raise InputError(f"{path}: the model's weights hold NaN or inf values (a run that diverged, or a damaged "
                         "file), so every mask would be empty; use another model, e.g. the run's best.keras")
    return _check_shapes(model, path)


def load_quality_model(path):
    """The quality model (`quality.QualityModel`) that travels with a model file, or `None`.

    A `.keras` file carries it inside its archive, an exported `.onnx` file in its `.onnx.json`. A model
    without one, or with one that cannot be read (a warning then names the file), still segments; its
    expected Dice and review flag are unknown.
    """
    import logging

    from lesion_unet import quality

    try:
        if path.lower().endswith(".onnx"):
            sidecar = path + ".json"
            if not os.path.isfile(sidecar):
                return None
            with open(sidecar, encoding="utf-8") as handle:
                description = json.load(handle)
            values = description.get("quality") if isinstance(description, dict) else None
            return None if values is None else quality.QualityModel.from_dict(values, f"{sidecar}: quality")
        return quality.read_from_keras(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        logging.getLogger("lesion_unet.inference").warning(
            "%s; the quality estimate is off (expected Dice and review flag unknown): re-export or re-fit it "
            "(protocol.py quality --attach)", error)
        return None


def model_image_size(model):
    """Returns the `(height, width)` that the model takes (fixed; `load_model` checks it)."""
    return tuple(model.input_shape[1:3])


def predict_batch(model, images, tta=False):
    """Predicts lesion probabilities for a batch of model-sized images.

    Args:
        model: a segmentation model.
        images: `float32` array `(b, h, w, 3)` in [0, 1].
        tta: average the predictions of the image and its horizontal, vertical and double flips
            (each flipped back).

    Returns:
        `float32` array `(b, h, w)` of probabilities.
    """
    if not tta:
        return np.asarray(model.predict_on_batch(images), dtype=np.float32)[..., 0]
    total = np.zeros(images.shape[:3], dtype=np.float32)
    for axes in ((), (2,), (1,), (1, 2)):
        flipped = np.flip(images, axis=axes) if axes else images
        prediction = np.asarray(model.predict_on_batch(np.ascontiguousarray(flipped)), dtype=np.float32)
        total += (np.flip(prediction, axis=axes) if axes else prediction)[..., 0]
    return total / 4.0


def resize_probability(probability, size):
    """Resizes a probability map to `(height, width)` with bilinear filtering."""
    if probability.shape == tuple(size):
        return probability
    image = Image.fromarray(probability.astype(np.float32), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def postprocess_mask(mask):
    """Keeps the largest connected lesion region (8-connected) and fills its holes.

    Args:
        mask: boolean array `(h, w)`.

    Returns:
        A boolean array of the same shape (all False if `mask` is).
    """
    # int32 labels: half the memory of skimage's int64 on a 10000x8000 image; same components.
    labels = np.empty(mask.shape, dtype=np.int32)
    count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool), output=labels)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.zeros(count + 1, dtype=np.int64)
    for top in range(0, labels.shape[0], _STRIP_ROWS):  # bincount copies its input to int64: in strips
        sizes += np.bincount(labels[top : top + _STRIP_ROWS].ravel(), minlength=count + 1)
    sizes[0] = 0
    largest = labels == sizes.argmax()
    del labels
    return ndimage.binary_fill_holes(largest)


# Above this many pixels, a probability map is resized to the image's size strip by strip, so the
# full-size float map (320 MB for a 10000x8000 photo) never exists at once.
STRIP_PIXELS = 16_000_000
_STRIP_ROWS = 512


def probability_to_mask(probability, size, threshold=0.5, postprocess=False):
    """Resizes a model-size probability map to `size` (bilinear), thresholds and post-processes it.

    Equals `to_mask(resize_probability(probability, size), ...)`; for images above `STRIP_PIXELS` the
    resize runs in strips of rows (PIL's resize of a source box), whose values agree with the whole
    resize to about 1e-6, and only the boolean mask is held at full size.

    Args:
        probability: `float32` array `(h, w)` at the model's size.
        size: `(height, width)` of the image.
        threshold: probability threshold.
        postprocess: keep the largest region and fill holes.

    Returns:
        A boolean mask of shape `size`.
    """
    height, width = size
    if height * width <= STRIP_PIXELS:
        return to_mask(resize_probability(probability, size), threshold, postprocess)
    source = Image.fromarray(probability.astype(np.float32), mode="F")
    source_height, source_width = probability.shape
    mask = np.empty((height, width), dtype=bool)
    for top in range(0, height, _STRIP_ROWS):
        bottom = min(height, top + _STRIP_ROWS)
        box = (0, top * source_height / height, source_width, bottom * source_height / height)
        strip = source.resize((width, bottom - top), Image.BILINEAR, box=box)
        mask[top:bottom] = np.asarray(strip, dtype=np.float32) >= threshold
    return postprocess_mask(mask) if postprocess else mask


def to_mask(probability, threshold=0.5, postprocess=False):
    """Thresholds a probability map (`>= threshold`), optionally post-processing the mask."""
    mask = probability >= threshold
    return postprocess_mask(mask) if postprocess else mask


def predict_files(model, paths, batch_size=16, tta=False, progress=True, desc="Predicting", full_size=True,
                  remove_hair=False, skipped=None):
    """Yields `(path, probability)` for image files, each map at the image's own size (or, with
    `full_size=False`, at the model's size, for `probability_to_mask`).

    Only one batch of images is decoded at a time, at the model's size (large JPEGs in draft mode).

    Args:
        model: a segmentation model with a fixed input size.
        paths: image files.
        batch_size: images per model call.
        tta: flip test-time augmentation (see `predict_batch`).
        progress: show a progress bar.
        desc: the progress bar's label.
        full_size: resize each map to its image's size.
        remove_hair: paint thin dark hairs over before the model sees the image
            (`hair_removal.read_image_without_hair`).
        skipped: a list to which images that cannot be read are appended as `(path, message)` and
            skipped; `None` stops at the first.

    Raises:
        InputError: an image cannot be read (without `skipped`), or the model gives non-finite values.
    """
    size = model_image_size(model)
    read = hair_removal.read_image_without_hair if remove_hair else read_image

    def read_or_skip(path):
        try:
            return read(path, size)
        except InputError as error:
            if skipped is None:
                raise
            skipped.append((path, str(error)))
            return None

    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            read_ok = [(path, image) for path in batch if (image := read_or_skip(path)) is not None]
            bar.update(len(batch) - len(read_ok))
            if not read_ok:
                continue
            chunk = [path for path, _ in read_ok]
            images = np.stack([image for _, image in read_ok]).astype(np.float32) / 255.0
            probabilities = predict_batch(model, images, tta)
            if not np.isfinite(probabilities).all():  # thresholded, NaN would make silently empty masks
                raise InputError(f"{getattr(model, 'name', 'the model')}: gives non-finite values (NaN or inf) "
                                 f"for {chunk[0]}{' and others' if len(chunk) > 1 else ''}: its weights are "
                                 "damaged or it diverged in training; use another model (e.g. the run's best.keras)")
            for path, probability in zip(chunk, probabilities):
                yield path, resize_probability(probability, image_size_of(path)) if full_size else probability
            bar.update(len(chunk))


def segment_files(model, paths, threshold=0.5, tta=False, postprocess=False, batch_size=16, progress=True,
                  remove_hair=False, skipped=None):
    """Yields `(path, probability, mask)` for image files: what `predict.py` writes, and what the web
    app (`webapp.py`) shows and serves, from this one function.

    Args:
        model: a segmentation model with a fixed input size.
        paths: image files.
        threshold: probability threshold.
        tta: flip test-time augmentation (see `predict_batch`).
        postprocess: keep the largest region and fill its holes.
        batch_size: images per model call.
        progress: show a progress bar.
        remove_hair: paint thin dark hairs over first (`predict_files`).
        skipped: a list that collects the images that cannot be read, as `predict_files`'s.

    Yields:
        The path; the `float32` probability map at the model's size; the boolean mask at the image's
        own size (`probability_to_mask`).

    Raises:
        InputError: an image cannot be read (without `skipped`).
    """
    for path, probability in predict_files(model, paths, batch_size, tta, progress, full_size=False,
                                           remove_hair=remove_hair, skipped=skipped):
        yield path, probability, probability_to_mask(probability, image_size_of(path), threshold, postprocess)


def encode_mask_png(mask):
    """Returns a boolean mask as the bytes of a 0/255 single-channel PNG (the ISIC format).

    `predict.py` writes these bytes and the web app serves them, so both give the same file.
    """
    pixels = mask.astype(np.uint8)
    pixels *= 255  # in place: one full-size copy, not two
    return encode_png(pixels)
