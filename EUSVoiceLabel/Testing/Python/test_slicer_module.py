"""Checks of the 3D Slicer extension that run without Slicer (Slicer cannot be installed on CI):

- the Slicer/MRML/VTK names the code uses exist in the real API (shared slicer_api_check);
- every shipped file under EUSVoiceLabel/ is listed in EUSVoiceLabel/CMakeLists.txt and every
  listed file exists;
- the .ui parses, every ``self.ui.<name>`` exists in it, every ``SlicerParameterName`` is a
  parameter-node field bound to a widget type the parameter node wrapper supports, every node
  selector gets the scene;
- the ExtensionsIndex entry validates against the official schema and matches the CMake
  metadata (``build_dependencies`` = ``EXTENSION_DEPENDS``), icons and screenshot exist;
- the module byte-compiles, imports no heavy dependency at import time, and its test class
  runs every ``test_*`` method.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "EUSVoiceLabel"
MODULE_PY = MODULE_DIR / "EUSVoiceLabel.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "EUSVoiceLabel.ui"
SHARED = REPO.parent / "shared"

# Folders under EUSVoiceLabel/ that are not part of the Slicer package.
NOT_SHIPPED_DIRS = {"Testing", "__pycache__", ".pytest_cache"}


def _module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_PY.name}")


def _cmake_list(text: str, var: str) -> list[str]:
    m = re.search(r"set\(\s*" + var + r"\s+(.*?)\)", text, re.S)
    assert m, f"{var} not set"
    items = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.extend(line.split())
    return [i.replace("${MODULE_NAME}", "EUSVoiceLabel") for i in items]


def _cmake_set(text: str, var: str) -> str:
    m = re.search(r"set\(\s*" + var + r'\s+"([^"]*)"\s*\)', text)
    assert m, f"{var} not set"
    return m.group(1)


# --------------------------------------------------------------------------- API names
def test_slicer_api_check_passes():
    checker = SHARED / "tools" / "slicer_api_check.py"
    if not checker.is_file() or not (SHARED / "slicer-api").is_dir():
        pytest.skip(f"{SHARED} (shared Slicer API index and checker) is not available here")
    out = subprocess.run([sys.executable, str(checker), "--api-dir", str(SHARED / "slicer-api"),
                          "EUSVoiceLabel"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 unknown" in out.stdout


def test_only_justified_api_check_ignores():
    """Every '# slicer-api: ignore' says why (text before the marker)."""
    for path in MODULE_DIR.rglob("*.py"):
        if NOT_SHIPPED_DIRS & set(path.relative_to(MODULE_DIR).parts):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"#\s*slicer-api:\s*ignore\s*$", line):
                comments = line.split("#")[1:-1]
                assert any(c.strip() for c in comments), f"{path}:{n}: ignore without a reason"


# --------------------------------------------------------------------------- packaging
def _shipped_files() -> set[str]:
    out = set()
    for path in MODULE_DIR.rglob("*"):
        rel = path.relative_to(MODULE_DIR)
        if not path.is_file() or NOT_SHIPPED_DIRS & set(rel.parts):
            continue
        if any(p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo") or rel.as_posix() == "CMakeLists.txt":
            continue
        out.add(rel.as_posix())
    return out


def test_every_shipped_file_is_listed_in_cmake_and_every_listed_file_exists():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = scripts + resources
    assert len(listed) == len(set(listed)), "a file is listed twice"
    missing = [f for f in listed if not (MODULE_DIR / f).is_file()]
    assert not missing, f"listed in EUSVoiceLabel/CMakeLists.txt but missing: {missing}"
    unlisted = sorted(_shipped_files() - set(listed))
    assert not unlisted, f"not listed in EUSVoiceLabel/CMakeLists.txt: {unlisted}"
    assert all(f.endswith(".py") for f in scripts)
    assert not any(f.endswith(".py") for f in resources)
    # Every .py directly in the module folder is loaded as a Slicer module: only ours.
    assert [p.name for p in MODULE_DIR.glob("*.py")] == ["EUSVoiceLabel.py"]
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(EUSVoiceLabel\)", text)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS",
                "EXTENSION_CATEGORY"):
        assert _cmake_set(text, var).strip(), var
    assert _cmake_set(text, "EXTENSION_DEPENDS") == "PyTorch"
    assert "add_subdirectory(EUSVoiceLabel)" in text
    assert text.index("find_package(Slicer REQUIRED)") < text.index("add_subdirectory(EUSVoiceLabel)")
    assert text.rstrip().endswith("include(${Slicer_EXTENSION_CPACK})")
    # icon and screenshot URLs point at files of this repository
    for var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in _cmake_set(text, var).split():
            rel = url.split("/main/", 1)[1]
            assert (REPO / rel).is_file(), f"{var}: {rel} is not in the repository"
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in (REPO / "EUSVoiceLabel.png", MODULE_DIR / "Resources/Icons/EUSVoiceLabel.png"):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (128, 128), path


def test_catalogue_entry_validates_and_matches_cmake():
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = SHARED / "slicer-schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} is not available here")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    entry_path = REPO / "EUSVoiceLabel.json"  # file name = the extension (project) name
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    jsonschema.validate(entry, schema)
    assert entry["$schema"] == schema["$id"]
    depends = _cmake_set((REPO / "CMakeLists.txt").read_text(encoding="utf-8"),
                         "EXTENSION_DEPENDS")
    expected = [] if depends == "NA" else depends.replace(";", " ").split()
    assert entry.get("build_dependencies", []) == expected
    assert entry["category"] == _cmake_set((REPO / "CMakeLists.txt").read_text(),
                                           "EXTENSION_CATEGORY")
    assert not entry_path.stem.startswith("Slicer")


# --------------------------------------------------------------------------- .ui and parameters
def _ui():
    return ET.parse(UI_FILE).getroot()


def _parameter_fields() -> dict[str, str]:
    cls = _class(_module_ast(), "EUSVoiceLabelParameterNode")
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper"
               for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


# Widget class -> what the parameterNodeWrapper GUI connectors bind it to.
CONNECTORS = {
    "qMRMLNodeComboBox": "node", "QCheckBox": "bool", "QSpinBox": "int",
    "QDoubleSpinBox": "float", "ctkSliderWidget": "float", "QComboBox": "choice",
    "QLineEdit": "str", "ctkPathLineEdit": "path", "ctkDirectoryButton": "path", "QLabel": "str",
}


def _kind(annotation: str) -> str:
    if annotation.startswith("vtkMRML"):
        return "node"
    if "Choice(" in annotation:
        return "choice"
    for t in ("bool", "int", "float", "str"):
        if annotation == t or annotation.startswith(f"Annotated[{t},"):
            return t
    if "Path" in annotation:
        return "path"
    return annotation


def test_ui_parses_and_has_the_module_top_widget():
    root = _ui()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "EUSVoiceLabel"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared


def test_every_ui_name_the_code_uses_exists():
    names = {w.get("name") for w in _ui().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text(encoding="utf-8")))
    assert used, "the module uses no self.ui names?"
    assert not sorted(used - names), f"not in the .ui: {sorted(used - names)}"


def test_every_slicer_parameter_name_is_a_field_bound_to_a_supported_widget():
    fields = _parameter_fields()
    bound = {}
    for w in _ui().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0", "must be a dynamic property"
                bound[p.findtext("string")] = w
    assert bound, "no widget is bound to the parameter node"
    for name, w in bound.items():
        assert name in fields, f"SlicerParameterName {name!r} is not a parameter-node field"
        cls = w.get("class")
        assert CONNECTORS.get(cls) == _kind(fields[name]), \
            f"{w.get('name')} ({cls}) cannot show {name}: {fields[name]}"
        if cls == "qMRMLNodeComboBox":
            types = [s.text for p in w.findall("property") if p.get("name") == "nodeTypes"
                     for s in p.iter("string")]
            assert types == [fields[name]], f"{w.get('name')} nodeTypes {types}"
    # fields without a widget are set by the code (e.g. results of Apply)
    assert set(bound) >= {"inputSequence", "audioPath", "audioOffsetS", "modelPath", "device",
                          "mentionsTable", "resultsTable"}


def test_node_selectors_get_the_scene_and_declare_their_behaviour():
    root = _ui()
    conns = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"),
              c.findtext("slot")) for c in root.iter("connection")}
    for w in root.iter("widget"):
        if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView"):
            assert ("EUSVoiceLabel", "mrmlSceneChanged(vtkMRMLScene*)", w.get("name"),
                    "setMRMLScene(vtkMRMLScene*)") in conns, w.get("name")
        if w.get("class") == "qMRMLNodeComboBox":
            props = {p.get("name") for p in w.findall("property")}
            assert {"nodeTypes", "noneEnabled", "addEnabled", "removeEnabled"} <= props


def test_apply_button_starts_disabled():
    apply = next(w for w in _ui().iter("widget") if w.get("name") == "applyButton")
    enabled = [p for p in apply.findall("property") if p.get("name") == "enabled"]
    assert enabled and enabled[0].findtext("bool") == "false"


# --------------------------------------------------------------------------- module code
def test_module_byte_compiles(tmp_path):
    py_compile.compile(str(MODULE_PY), cfile=str(tmp_path / "m.pyc"), doraise=True)


def test_module_follows_the_scripted_module_conventions():
    tree = _module_ast()
    bases = {"EUSVoiceLabel": "ScriptedLoadableModule",
             "EUSVoiceLabelWidget": "ScriptedLoadableModuleWidget",
             "EUSVoiceLabelLogic": "ScriptedLoadableModuleLogic",
             "EUSVoiceLabelTest": "ScriptedLoadableModuleTest"}
    for cls, base in bases.items():
        assert base in [ast.unparse(b) for b in _class(tree, cls).bases], cls
    test_cls = _class(tree, "EUSVoiceLabelTest")
    tests = [f.name for f in test_cls.body
             if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    assert len(tests) >= 3
    run = next(f for f in test_cls.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    run_src = ast.unparse(run)
    assert all(f"self.{t}" in run_src for t in tests), "runTest must run every test_ method"
    setup = next(f for f in test_cls.body if isinstance(f, ast.FunctionDef) and f.name == "setUp")
    assert "slicer.mrmlScene.Clear" in ast.unparse(setup)


# Packages the Slicer module may only import after setupPythonRequirements (not bundled with
# Slicer, or torch from the PyTorch extension).
NOT_BUNDLED = ("torch", "torchvision", "av", "PIL", "nrrd", "slicerio", "scipy", "tqdm",
               "pocketsphinx", "silero_vad", "webrtc_noise_gain", "matplotlib")

_BLOCKED_IMPORT = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Block())
for module in sys.argv[2:]:
    __import__(module)
print("ok")
"""


def test_module_installs_nothing_and_imports_no_heavy_package_at_import_time():
    """Dependencies come on first use: the module's top level imports only what Slicer
    bundles and the library modules that need nothing else, and pip / PyTorch installs happen
    inside logic methods."""
    tree = _module_ast()
    allowed = {"__future__", "json", "os", "pathlib", "shutil", "sys", "tempfile", "time",
               "importlib", "typing", "numpy", "qt", "vtk", "slicer", "slicer.i18n",
               "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.util"}
    library = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= allowed, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            if node.module.startswith("EUSVoiceLabelLib."):
                library.append(node.module)
            else:
                assert node.module in allowed, ast.unparse(node)
        elif isinstance(node, ast.Expr):
            assert "pip_install" not in ast.unparse(node)
    # The library modules imported at the top load without any package Slicer lacks.
    assert library
    out = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORT, ",".join(NOT_BUNDLED), *library],
                         cwd=MODULE_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    src = MODULE_PY.read_text(encoding="utf-8")
    # 5.12-only packaging API is feature-detected; 5.10 falls back to pip_install after asking
    assert 'find_spec("slicer.packaging")' in src
    assert "confirmOkCancelDisplay" in src and "slicer.util.pip_install" in src
    assert "PyTorchUtils" in src and 'skip_packages=["torch"' in src


def test_command_line_starts_without_the_heavy_packages():
    """``eusvoicelabel --help`` and the package's lazy API import no heavy package."""
    out = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORT, ",".join(NOT_BUNDLED),
                          "EUSVoiceLabelLib", "EUSVoiceLabelLib.cli"],
                         cwd=MODULE_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_logic_methods_are_documented_for_batch_use():
    logic = _class(_module_ast(), "EUSVoiceLabelLogic")
    public = {f.name: f for f in logic.body
              if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
    for name in ("loadProcedure", "setSequenceAudio", "mentionsFromFile", "detectMentions",
                 "mentionsToTable", "label", "outputNodes", "jumpToWindow", "acceptWindow",
                 "correctWindow", "sortResults", "exportResults", "addToCohort",
                 "startTraining", "cancelTraining"):
        assert name in public, name
        assert ast.get_docstring(public[name]) or name in ("clearReview",), name


def test_readme_batch_script_uses_real_logic_methods_and_arguments():
    """The README's console script compiles and calls existing logic methods with keyword
    arguments those methods accept."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## 3D Slicer extension"):]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    tree = ast.parse(script)
    logic = _class(_module_ast(), "EUSVoiceLabelLogic")
    methods = {f.name: f for f in logic.body if isinstance(f, ast.FunctionDef)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
             and n.func.value.id == "logic"]
    assert len(calls) >= 6
    for call in calls:
        name = call.func.attr
        assert name in methods, f"README calls logic.{name}, which does not exist"
        params = [a.arg for a in methods[name].args.args[1:] + methods[name].args.kwonlyargs]
        assert len(call.args) <= len(params), name
        for kw in call.keywords:
            assert kw.arg in params, f"logic.{name} has no argument {kw.arg!r}"


def test_slicer_export_goes_through_the_output_rule_of_the_command_line():
    """exportResults writes only through slicer.export.export_reviewed, which claims both
    folders under the command line's output rule and locks (test_review.py tests it on real
    files); no file is written by the module itself."""
    logic = _class(_module_ast(), "EUSVoiceLabelLogic")
    method = next(f for f in logic.body
                  if isinstance(f, ast.FunctionDef) and f.name == "exportResults")
    called = {ast.unparse(n.func) for n in ast.walk(method) if isinstance(n, ast.Call)}
    assert "export_reviewed" in called
    assert not called & {"write_label_outputs", "export_dataset", "atomic_write_text",
                         "output_lock", "open"}, called
