"""The code's shape: imports point down (package modules never import the root's scripts, and no
import cycle), no `sys.path` edits, and the public API of `lesion_unet`."""

import ast
import os
import subprocess
import sys

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "lesion_unet")


def _imports(path):
    """The modules a file imports, by their dotted names (`from lesion_unet import x` gives `lesion_unet.x`)."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_modules():
    """`{dotted name: file}` of every module of the package and its subpackages (not `__init__.py`)."""
    modules = {}
    for folder, _, names in os.walk(PACKAGE):
        prefix = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        modules.update({f"{prefix}.{name[:-3]}": os.path.join(folder, name)
                        for name in names if name.endswith(".py") and name != "__init__.py"})
    return modules


def test_package_modules_import_no_root_file_and_form_no_cycle():
    root_files = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    modules = _package_modules()
    graph = {}
    for module, path in modules.items():
        imports = _imports(path)
        upward = sorted(name for name in imports if name.split(".")[0] in root_files)
        assert upward == [], f"{module} imports root files {upward}"
        graph[module] = {name for name in imports if name in modules}
    assert len(graph) >= 20 and sum(map(len, graph.values())) > 40  # the walk sees the package

    def cycle_from(start):  # depth-first search for a path back to `start`
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    return path + [start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
        return None

    cycles = [cycle for cycle in map(cycle_from, graph) if cycle]
    assert cycles == []


def test_no_sys_path_edits_in_the_package_the_scripts_or_the_tests():
    folders = [PACKAGE, os.path.join(PACKAGE, "protocol"), ROOT,
               *(os.path.join(ROOT, name) for name in ("tests", "benchmarks", "experiments"))]
    folders.append(os.path.join(ROOT, "notebooks"))  # they import the installed package (requirements.txt: -e .)
    edits = [os.path.join(folder, name) for folder in folders for name in sorted(os.listdir(folder))
             if name.endswith((".py", ".ipynb")) and name != "test_layout.py"
             and "sys.path." in open(os.path.join(folder, name), encoding="utf-8").read()]
    assert edits == []


def test_the_public_api_from_another_folder_loads_no_keras_until_asked(tmp_path):
    code = ("import sys, lesion_unet\n"
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules\n"
            "from lesion_unet import find_pairs, split_pairs, read_mask, __version__\n"
            "assert 'keras' not in sys.modules\n"
            "from lesion_unet import build_improved_unet, load_model\n"
            "model = build_improved_unet((32, 32), base_filters=4)\n"
            "print(model.name, model.output_shape, sorted(lesion_unet.__all__)[:3], __version__)\n")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[0].startswith("improved_unet (None, 32, 32, 1) ['InputError', 'LesionDataset',")


def test_scoring_masks_loads_neither_keras_nor_tensorflow(synthetic_dir, tmp_path):
    """`evaluate.py --predictions` needs NumPy only (the ONNX path's test is in test_onnx.py)."""
    code = ("import sys, evaluate\n"
            f"evaluate.main(['--predictions', {os.path.join(synthetic_dir, 'masks')!r}, '--data', {synthetic_dir!r}, "
            f"'--out', {str(tmp_path / 'report')!r}])\n"
            "loaded = sorted(name for name in ('keras', 'tensorflow', 'jax') if name in sys.modules)\n"
            "print('loaded:', loaded)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stdout and "dice" in result.stdout
    assert "tensorflow" not in result.stderr.lower() and os.path.isfile(tmp_path / "report" / "metrics.json")


def test_train_py_flags_are_built_from_the_typed_run_settings():
    import dataclasses

    from lesion_unet import train_options

    actions = {action.dest: action for action in train_options.build_parser()._actions}
    defaults = train_options.RunSettings()
    fields = dataclasses.fields(train_options.RunSettings)
    assert len(fields) >= 25
    for field in fields:
        action = actions[field.name]
        assert action.option_strings[0] == "--" + field.name.replace("_", "-")
        assert action.default == getattr(defaults, field.name) and action.help == field.metadata["help"]
    assert train_options.RunSettings().zoom is not defaults.zoom  # list defaults are not shared
    with_more = train_options.RunSettings(epochs=3, image_size=[64, 96])
    assert (with_more.epochs, with_more.image_size, with_more.model) == (3, [64, 96], "improved")
