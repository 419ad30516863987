"""The generalisation protocol behind every recipe decision (`protocol.py` is its command line).

- `shift`: shifted copies of held-out images (zoomed in, darker, dark corners, blurred; hair and a
  colour cast when named) and the per-image scores under each.
- `cv`: k-fold training of a recipe, each fold's test split scored under the shifts.
- `compare`: reports side by side, image by image, with paired bootstrap intervals.
- `quality_fit`: the per-image quality estimate (`quality.py`) fitted on validation images and shifted
  copies, out of fold.
"""
