"""Slicer's own MRML, outside the Slicer application: a scene wired like the application's, the
module ``EUSVoiceLabel.py`` imported against it, and offscreen slice-view renders.

``slicer-core`` (PyPI, Kitware's SlicerCore build) holds MRML, the MRML/Logic parts of the
loadable modules (Sequences, Markups, Segmentations, Colors, Volumes, Tables, Texts, Subject
hierarchy), the displayable managers and Slicer's own ``slicer/util.py``, but no Qt.  This
module supplies what the application would:

- :class:`AppScene` wires a scene as ``qSlicerCoreApplication`` and the module factory do: an
  application logic with its colour logic (default colour nodes, and the two colour files our
  nodes name, written into a temporary share folder), each module logic registered
  with the application logic (which also registers its node classes: sequence browsers, markups
  storage ...), and slice logics Red, Yellow, Green.
- :func:`install_shim` fills in, as ``slicer.*``, only what has no MRML counterpart: ``slicer.app``
  (render pausing, no main window, testing mode), ``slicer.modules.<name>.logic()`` (the real
  logics), ``slicer.mrmlScene``, ``slicer.i18n``, ``slicer.parameterNodeWrapper`` (a parameter node
  that keeps typed values in memory), ``slicer.ScriptedLoadableModule`` (the four base classes)
  and an empty ``qt`` module (the widget is never built here).
- :func:`load_module` imports ``EUSVoiceLabel.py`` itself.
- :class:`SliceView` renders a slice view offscreen (EGL) with Slicer's slice logic (the blended
  background / foreground / label layers) and displayable managers (markups, segmentations).

Everything else (storage nodes, sequence browsing, scene import, ``slicer.util``) is Slicer's
code.  When ``slicer-core`` is not installed, :data:`SKIP_REASON` says so and tests skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import types
import unittest
from pathlib import Path
from typing import Optional

import numpy as np

# EGL needs no X server: Mesa renders offscreen (Debian libegl1 libegl-mesa0 libgl1-mesa-dri).
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

try:
    import slicer
    import slicer.util
    import vtk

    SKIP_REASON = None if hasattr(slicer, "vtkMRMLScene") else \
        "the 'slicer' package found is not slicer-core (no vtkMRMLScene)"
except ImportError as exc:  # pragma: no cover - exercised on machines without slicer-core
    slicer = vtk = None
    SKIP_REASON = f"slicer-core is not installed ({exc}); run: bash scripts/install.sh --test"

MODULE_DIR = Path(__file__).resolve().parents[2]
MODULE_PY = MODULE_DIR / "EUSVoiceLabel.py"

#: Module logics of the application (module name -> logic class name in slicer-core).
MODULE_LOGICS = {
    "Sequences": "vtkSlicerSequencesLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Texts": "vtkSlicerTextsLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}
#: The slice views of the default layout and their orientations (as the layout manager sets).
SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def write_color_files(folder: Path) -> str:
    """The two colour files of Slicer's share folder (not in the wheel) that our nodes name:
    ``Inferno.txt`` (the heat map; matplotlib's inferno, which Slicer's file reproduces) and
    ``GenericColors.txt`` (Slicer's default labelmap colours; here a 256-entry palette).  Loaded
    from the share folder by the colour logic, their node ids are the application's
    (``vtkMRMLColorTableNodeFileInferno.txt`` ...).  Returns the folder."""
    import matplotlib  # deferred: only when a scene is wired

    folder.mkdir(parents=True, exist_ok=True)
    inferno = matplotlib.colormaps["inferno"]
    palette = matplotlib.colormaps["tab20"]
    with open(folder / "Inferno.txt", "w", encoding="ascii") as f:
        for i in range(256):
            r, g, b, _ = (round(255 * c) for c in inferno(i / 255))
            f.write(f"{i} {i} {r} {g} {b} 255\n")
    with open(folder / "GenericColors.txt", "w", encoding="ascii") as f:
        f.write("0 background 0 0 0 0\n")
        for i in range(1, 256):
            r, g, b, _ = (round(255 * c) for c in palette((i - 1) % 20))
            f.write(f"{i} label_{i} {r} {g} {b} 255\n")
    return str(folder)


class AppScene:
    """An MRML scene wired like the Slicer application's."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self._cache = tempfile.TemporaryDirectory(prefix="mrmlscene-cache-")
        # Data IO and cache managers: reading a bundle (.seq.mrb) unpacks it in the cache.
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(self._cache.name)
        io = slicer.vtkDataIOManager()
        io.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(io)
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        # Slicer's home: the share folder holds the colour files the colour logic loads.
        self._home = tempfile.TemporaryDirectory(prefix="mrmlscene-home-")
        self.app_logic.SetHomeDirectory(self._home.name)
        self.app_logic.SetShareDirectory("share")
        write_color_files(Path(self._home.name) / "share" / "ColorFiles")
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(self.app_logic)
        colors.SetMRMLScene(self.scene)
        self.app_logic.SetColorLogic(colors)
        self.app_logic.SetModuleLogic("Colors", colors)
        self.logics = {"Colors": colors}
        for name, class_name in MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.slice_logics = {}
        collection = vtk.vtkCollection()
        for view, orientation in SLICE_VIEWS.items():
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            node = logic.AddSliceNode(view)
            node.SetDefaultOrientation(orientation)
            node.SetOrientationToDefault()
            collection.AddItem(logic)
            self.slice_logics[view] = logic
        self.app_logic.SetSliceLogics(collection)

    def clear(self) -> None:
        """``slicer.mrmlScene.Clear()`` as the self-test's setUp does (singletons stay)."""
        self.scene.Clear(0)

    def slice_composite(self, view: str = "Red"):
        return self.slice_logics[view].GetSliceCompositeNode()

    def import_scene(self, path: os.PathLike | str) -> None:
        """Open a ``.mrml`` file into this scene as drag-and-drop does (``Import``)."""
        self.scene.SetURL(str(path))
        if not self.scene.Import():
            raise RuntimeError(f"Slicer could not import {path}")


# --------------------------------------------------------------------------- shim
class _LayoutManager:
    """What ``slicer.util`` asks of the layout manager: the slice logics."""

    def __init__(self, app_scene: AppScene) -> None:
        self._app = app_scene

    def mrmlSliceLogics(self):
        return self._app.app_logic.GetSliceLogics()

    def sliceViewNames(self):
        return list(self._app.slice_logics)


class _IOManager:
    """``slicer.app.coreIOManager()`` for what ``slicer.util.saveScene`` asks: a scene bundle
    (``.mrb``) is written as Slicer's scene-bundle writer does it, with the application logic's
    ``SaveSceneToSlicerDataBundleDirectory`` (every node's data through its storage node) and
    a zip of that folder."""

    def __init__(self, app_scene: AppScene) -> None:
        self._app = app_scene

    def saveNodes(self, file_type: str, properties: dict, messages=None) -> bool:
        path = Path(properties["fileName"])
        if file_type != "SceneFile" or path.suffix != ".mrb":
            raise NotImplementedError(f"saving {file_type} {path.name} needs the application")
        with tempfile.TemporaryDirectory(prefix="mrmlscene-mrb-") as tmp:
            bundle = Path(tmp) / path.stem
            bundle.mkdir()
            if not self._app.app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None):
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            archive = shutil.make_archive(str(Path(tmp) / "bundle"), "zip", tmp, path.stem)
            shutil.move(archive, path)
        return True


class _App:
    """``slicer.app`` without Qt: no main window, testing mode, rendering never paused."""

    def __init__(self, app_scene: AppScene) -> None:
        self._layout = _LayoutManager(app_scene)
        self._io = _IOManager(app_scene)
        self._app_logic = app_scene.app_logic
        self.slicerHome = ""

    def layoutManager(self):
        return self._layout

    def coreIOManager(self):
        return self._io

    def applicationLogic(self):
        return self._app_logic

    def mainWindow(self):
        return None

    def testingEnabled(self) -> bool:
        return True

    def pauseRender(self) -> None:
        pass

    def resumeRender(self) -> None:
        pass

    def processEvents(self) -> None:
        pass


def _tr(text: str) -> str:
    return text


def _translate(context: str, text: str) -> str:
    return text


class _ParameterNodeField:
    """Default value of a ``parameterNodeWrapper`` field (``Annotated`` metadata ignored)."""


def _parameter_node_wrapper(cls):
    """``slicer.parameterNodeWrapper.parameterNodeWrapper``: typed fields of a parameter node.

    The real wrapper serialises each field into the node's parameters; here the values live in
    a dict kept on the Python side, keyed by the node, which is all the logic relies on (it
    reads back what it wrote, and ``None`` for fields never set).
    """
    defaults = {name: getattr(cls, name, None) for name in getattr(cls, "__annotations__", {})}
    store: dict[str, dict] = {}

    def __init__(self, node=None):
        object.__setattr__(self, "parameterNode", node)
        key = node.GetID() if node is not None else "none"
        object.__setattr__(self, "_values", store.setdefault(key, dict(defaults)))

    def __getattr__(self, name):
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name not in defaults:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        self._values[name] = value

    return type(cls.__name__, (), {"__init__": __init__, "__getattr__": __getattr__,
                                   "__setattr__": __setattr__, "__doc__": cls.__doc__})


class _Module:
    def __init__(self, parent) -> None:
        self.parent = parent


class _Widget:
    def __init__(self, parent=None) -> None:
        self.parent = parent


class _Logic:
    """The base logic: ``getParameterNode`` = the module's singleton scripted-module node."""

    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        tag = self.moduleName
        node = scene.GetSingletonNode(tag, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(tag)
            node.SetName(scene.GenerateUniqueName(tag))
            node.SetModuleName(tag)
            node = scene.AddNode(node)
        return node


class _Test(unittest.TestCase):
    """The self-test base: ``delayDisplay`` only records its messages."""

    messages: list = []

    def delayDisplay(self, message, msec=1000) -> None:
        self.messages.append(message)


class _PyTorchUtilsLogic:
    """The PyTorch extension's logic, as far as the module asks: is torch there?"""

    @staticmethod
    def torchInstalled() -> bool:
        return importlib.util.find_spec("torch") is not None


def install_shim(app_scene: AppScene) -> None:
    """Point ``slicer.mrmlScene``, ``slicer.app`` and ``slicer.modules`` at ``app_scene`` and add
    the Qt-side modules ``EUSVoiceLabel.py`` imports (and ``PyTorchUtils``, the PyTorch
    extension's module that ``setupPythonRequirements`` asks)."""
    slicer.mrmlScene = app_scene.scene
    slicer.app = _App(app_scene)
    modules = types.SimpleNamespace()
    for name, logic in app_scene.logics.items():
        # slicer.modules.<lowercase>.logic() returns the module logic, as in the application
        setattr(modules, name.lower(), types.SimpleNamespace(logic=lambda lg=logic: lg))
    slicer.modules = modules
    shims = {
        "slicer.i18n": {"tr": _tr, "translate": _translate},
        "slicer.parameterNodeWrapper": {
            "parameterNodeWrapper": _parameter_node_wrapper,
            "WithinRange": lambda *a, **k: _ParameterNodeField(),
            "Choice": lambda *a, **k: _ParameterNodeField(),
            "Default": lambda *a, **k: _ParameterNodeField()},
        "slicer.ScriptedLoadableModule": {
            "ScriptedLoadableModule": _Module,
            "ScriptedLoadableModuleWidget": _Widget,
            "ScriptedLoadableModuleLogic": _Logic,
            "ScriptedLoadableModuleTest": _Test},
        "qt": {},
        # The PyTorch extension: torch is installed here already.
        "PyTorchUtils": {"PyTorchUtilsLogic": _PyTorchUtilsLogic},
    }
    for name, attrs in shims.items():
        module = sys.modules.get(name) or types.ModuleType(name)
        for key, value in attrs.items():
            setattr(module, key, value)
        sys.modules[name] = module
        if name.startswith("slicer."):
            setattr(slicer, name.split(".", 1)[1], module)


def load_module(app_scene: AppScene):
    """Import ``EUSVoiceLabel.py`` (the Slicer module file) against ``app_scene``."""
    install_shim(app_scene)
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    module = sys.modules.get("EUSVoiceLabel")
    if module is None:
        spec = importlib.util.spec_from_file_location("EUSVoiceLabel", MODULE_PY)
        module = importlib.util.module_from_spec(spec)
        sys.modules["EUSVoiceLabel"] = module
        spec.loader.exec_module(module)

    def get_module_logic(name):
        if name != "EUSVoiceLabel":
            return app_scene.logics[name]
        return module.EUSVoiceLabelLogic()

    slicer.util.getModuleLogic = get_module_logic
    return module


# --------------------------------------------------------------------------- rendering
class SliceView:
    """A slice view rendered offscreen: the slice logic's blended layers as the background
    image, Slicer's 2-D displayable managers (markups, segmentations) on top, as
    ``qMRMLSliceView`` composes them."""

    MANAGERS = ("vtkMRMLMarkupsDisplayableManager", "vtkMRMLSegmentationsDisplayableManager2D")

    def __init__(self, app_scene: AppScene, view: str = "Red",
                 size: tuple[int, int] = (640, 400)) -> None:
        self.app = app_scene
        self.logic = app_scene.slice_logics[view]
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.window.SetMultiSamples(0)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        # the blended slice image (RGBA 0-255) as a background 2-D actor
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(self.mapper)
        self.image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image_actor)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_scene.app_logic)
        for name in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)
        self.managers.SetMRMLDisplayableNode(self.logic.GetSliceNode())
        self.logic.ResizeSliceNode(*size)

    def fit(self) -> None:
        self.logic.FitSliceToBackground()

    def render(self) -> np.ndarray:
        """Render and return the view as an (H, W, 3) uint8 array (row 0 = top)."""
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        w, h, _ = image.GetDimensions()
        from vtk.util.numpy_support import vtk_to_numpy

        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
        return np.ascontiguousarray(pixels[::-1])

    def xy_of_ras(self, ras) -> tuple[float, float]:
        """Pixel (column, row from the top) of a RAS point in the rendered view."""
        m = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.logic.GetSliceNode().GetXYToRAS(), m)
        x, y, _, _ = m.MultiplyPoint([*ras, 1.0])
        return x, self.window.GetSize()[1] - 1 - y

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()
