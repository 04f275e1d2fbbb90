"""EUSVoiceLabel: label endoscopic ultrasound video from what the clinician says (3D Slicer module).

The module is a thin MRML layer over the Slicer-free library ``EUSVoiceLabelLib`` (shipped in
the same folder): the library loads procedures, detects mentions, runs the network and writes
files; this file turns its inputs and results into MRML nodes (volume sequences with a browser,
tables, segmentations, markups, text nodes) and back.

Targets Slicer 5.10+ (Python 3.12).  APIs that only exist in 5.12+ (``slicer.packaging``) are
feature-detected.  Python dependencies are installed on first use, never at import: torch
through the PyTorch extension (``PyTorchUtils``), the rest from ``Resources/requirements.txt``.

Batch use from the Python console goes through :class:`EUSVoiceLabelLogic`, whose methods take
and return MRML nodes (see the README section "3D Slicer extension").
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from importlib import util as importlib_util
from typing import Annotated, Callable, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import (vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSequenceBrowserNode,
                    vtkMRMLSequenceNode, vtkMRMLTableNode)
from slicer.i18n import tr as _, translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# The library ships next to this file.  These of its modules import only the standard library
# and numpy, which Slicer bundles; the parts that need torch, pocketsphinx or the other packages
# of Resources/requirements.txt are imported in the methods that use them, after
# setupPythonRequirements, so that this module loads before they are installed.
from EUSVoiceLabelLib.core.errors import CheckpointError, MediaError, MentionsError
from EUSVoiceLabelLib.core.paper import FPS
from EUSVoiceLabelLib.core.progress import CallbackProgress, parse_progress_line
from EUSVoiceLabelLib.data.mentions import Mention, read_mentions
from EUSVoiceLabelLib.data.procedure import load_procedure
from EUSVoiceLabelLib.data.vocabulary import LabelSet
from EUSVoiceLabelLib.labelling.runs import TIMELINE_COLUMNS, runs_of
from EUSVoiceLabelLib.nn.evidence import DISPLAY_THRESHOLD
from EUSVoiceLabelLib.slicer.files import POINT_COLOR, REVIEW_POINT_COLOR
from EUSVoiceLabelLib.slicer.overlays import overlay_items, window_point, window_text
from EUSVoiceLabelLib.slicer.review import (MENTION_COLUMNS, RESULT_COLUMNS, ReviewTable,
                                            RunReview, mentions_from_rows, mentions_to_rows)
from EUSVoiceLabelLib.slicer.support import (LARGE_SEQUENCE_BYTES, apply_problems, cine_ijk_to_ras,
                                             crop_ijk_to_ras, format_crop, index_value,
                                             master_item_at, missing_requirements, parse_crop,
                                             path_or_none, procedure_from_files,
                                             procedure_from_frames, read_requirements,
                                             sequence_crop, sequence_times, split_log_lines,
                                             train_arguments, write_tiny_procedure,
                                             write_training_procedure)

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))

# Node attributes (a saved scene keeps them; Slicer has no audio node).
ATTR_PREFIX = "EUSVoiceLabel."
ATTR_ROLE = ATTR_PREFIX + "Role"
ATTR_RECORDING = ATTR_PREFIX + "RecordingPath"
ATTR_AUDIO = ATTR_PREFIX + "AudioPath"
ATTR_OFFSET = ATTR_PREFIX + "AudioOffsetS"
ATTR_FPS = ATTR_PREFIX + "FramesFps"
ATTR_CROP = ATTR_PREFIX + "Crop"
ATTR_WINDOW = ATTR_PREFIX + "Window"
ATTR_MODEL = ATTR_PREFIX + "ModelPath"
ATTR_LABELSET = ATTR_PREFIX + "LabelSet"
# Node reference roles from a results table to everything it was made from / produced.
REF_FRAMES = "EUSVoiceLabelFrames"
REF_BROWSER = "EUSVoiceLabelBrowser"
REF_MENTIONS = "EUSVoiceLabelMentions"
REF_HEATMAP = "EUSVoiceLabelHeatMap"
REF_SEGMENTATION = "EUSVoiceLabelSegmentation"
REF_POINTS = "EUSVoiceLabelPoints"
REF_TEXT = "EUSVoiceLabelText"
REF_RESULTS = "EUSVoiceLabelResults"
REF_WHOLE_TEXT = "EUSVoiceLabelWholeText"
# The nodes a results table leads to (outputNodes keys -> reference roles); WINDOW_OUTPUTS are
# the per-window output sequences a labelling run makes.
OUTPUT_ROLES = {"frames": REF_FRAMES, "browser": REF_BROWSER, "mentions": REF_MENTIONS,
                "heatMap": REF_HEATMAP, "segmentation": REF_SEGMENTATION, "points": REF_POINTS,
                "text": REF_TEXT}
WINDOW_OUTPUTS = ("text", "heatMap", "segmentation", "points")

INFERNO_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
TORCH_REQUIREMENT = ">=2.1"


class InstallError(RuntimeError):
    """A dependency is missing and was not (or could not be) installed."""


#
# EUSVoiceLabel
#


class EUSVoiceLabel(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("EUS Voice Label")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Ultrasound")]
        self.parent.dependencies = ["Sequences", "Markups", "Segmentations"]
        self.parent.contributors = ["EUSVoiceLabel developers"]
        self.parent.helpText = _("""
Labels endoscopic ultrasound (EUS) video from what the clinician says while scanning
(after Bonmati et al., IEEE TMI 2021). Load a procedure (video or frames + audio), find the
spoken landmark names (from a file, a transcript or automatically), and a two-branch network
labels the frames of each spoken second, with a Grad-CAM heat map showing the evidence. Review
and correct the labels, then export a labelled dataset.
See the <a href="https://github.com/EUSVoiceLabel/SlicerEUSVoiceLabel#3d-slicer-extension">
module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Method: E. Bonmati, Y. Hu, A. Grimwood et al., "Voice-assisted image labelling for endoscopic
ultrasound classification using neural networks", IEEE Transactions on Medical Imaging, 2021.
""")


#
# EUSVoiceLabelParameterNode
#


@parameterNodeWrapper
class EUSVoiceLabelParameterNode:
    """The module's settings, saved with the scene.

    recordingPath - video file, frames folder, .seq.nrrd or procedure folder to load.
    audioPath, audioOffsetS - the recording's audio (audio time = video time + offset).
    framesFps - frame rate of a frames folder.
    inputSequence - the volume sequence to label (loaded, or already in the scene).
    mentionsPath - mentions CSV or SRT/WebVTT transcript; mentionsTable - the editable mentions.
    modelPath, device - the checkpoint and where it runs.
    trainEpochs, trainImageSize - settings of "Train from cohort folder...".
    withHeatMaps, heatThreshold, heatOpacity - Grad-CAM outputs and their display.
    resultsTable - the results of the last labelling run.
    frameModelPath, wholeStride - the frame classifier and stride of "Label the whole
        procedure"; timelineTable - its timeline.
    exportFolder, cohortFolder - where exports and reviewed training data go.
    """

    recordingPath: pathlib.Path
    audioPath: pathlib.Path
    audioOffsetS: Annotated[float, WithinRange(-3600.0, 3600.0)] = 0.0
    framesFps: Annotated[float, WithinRange(1.0, 1000.0)] = FPS
    inputSequence: vtkMRMLSequenceNode
    mentionsPath: pathlib.Path
    mentionsTable: vtkMRMLTableNode
    modelPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    trainEpochs: Annotated[int, WithinRange(1, 10000)] = 50
    trainImageSize: str = ""
    withHeatMaps: bool = True
    heatThreshold: Annotated[float, WithinRange(0.0, 1.0)] = DISPLAY_THRESHOLD
    heatOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    resultsTable: vtkMRMLTableNode
    frameModelPath: pathlib.Path
    wholeStride: Annotated[int, WithinRange(1, 250)] = 1
    timelineTable: vtkMRMLTableNode
    exportFolder: pathlib.Path
    cohortFolder: pathlib.Path


#
# EUSVoiceLabelWidget
#


class EUSVoiceLabelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel.  All work is delegated to :class:`EUSVoiceLabelLogic`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._trainingLog = ""

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/EUSVoiceLabel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = EUSVoiceLabelLogic()

        # Only our own tables in the mentions / results selectors.
        self.ui.mentionsTableSelector.addAttribute("vtkMRMLTableNode", ATTR_ROLE, "mentions")
        self.ui.resultsTableSelector.addAttribute("vtkMRMLTableNode", ATTR_ROLE, "results")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.framesFolderButton.connect("clicked(bool)", self.onChooseFramesFolder)
        self.ui.loadProcedureButton.connect("clicked(bool)", self.onLoadProcedure)
        self.ui.setSequenceAudioButton.connect("clicked(bool)", self.onSetSequenceAudio)
        self.ui.loadMentionsButton.connect("clicked(bool)", self.onLoadMentions)
        self.ui.detectMentionsButton.connect("clicked(bool)", self.onDetectMentions)
        self.ui.addMentionButton.connect("clicked(bool)", self.onAddMention)
        self.ui.deleteMentionButton.connect("clicked(bool)", self.onDeleteMention)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelTrainingButton.connect("clicked(bool)", self.onCancelTraining)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.sortByConfidenceButton.connect("clicked(bool)", self.onSortByConfidence)
        self.ui.sortByTimeButton.connect("clicked(bool)", self.onSortByTime)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.correctButton.connect("clicked(bool)", self.onCorrect)
        self.ui.clearReviewButton.connect("clicked(bool)", self.onClearReview)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.addToCohortButton.connect("clicked(bool)", self.onAddToCohort)
        self.ui.resultsTableView.connect("selectionChanged()", self.onResultSelectionChanged)
        self.ui.labelWholeButton.connect("clicked(bool)", self.onLabelWhole)
        self.ui.timelineTableView.connect("selectionChanged()", self.onTimelineSelectionChanged)
        self.ui.acceptRunsButton.connect("clicked(bool)", self.onAcceptRuns)
        self.ui.correctRunsButton.connect("clicked(bool)", self.onCorrectRuns)
        self.ui.mentionsTableSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                              self.ui.mentionsTableView.setMRMLTableNode)
        self.ui.resultsTableSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                             self.ui.resultsTableView.setMRMLTableNode)
        self.ui.heatOpacitySlider.connect("valueChanged(double)", self.onHeatDisplayChanged)
        self.ui.heatThresholdSlider.connect("valueChanged(double)", self.onHeatDisplayChanged)
        self.ui.cancelTrainingButton.enabled = False
        self.ui.trainingProgressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancelTraining()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[EUSVoiceLabelParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # ------------------------------------------------------------------ state
    def _updateGui(self, caller=None, event=None) -> None:
        """Enable what can be done now; the Apply tooltip says what is missing."""
        p = self._parameterNode
        if p is None:
            return
        seq = p.inputSequence
        audio = seq is not None and bool(seq.GetAttribute(ATTR_AUDIO) or
                                         seq.GetAttribute(ATTR_RECORDING))
        nMentions = p.mentionsTable.GetNumberOfRows() if p.mentionsTable else 0
        problems = apply_problems(seq is not None, audio, path_or_none(p.modelPath), nMentions)
        self.ui.applyButton.enabled = not problems
        self.ui.applyButton.toolTip = (_("Label every mention window") if not problems
                                       else "\n".join(problems))
        self.ui.loadProcedureButton.enabled = path_or_none(p.recordingPath) is not None
        self.ui.setSequenceAudioButton.enabled = seq is not None and \
            path_or_none(p.audioPath) is not None
        self.ui.detectMentionsButton.enabled = seq is not None and audio
        self.ui.loadMentionsButton.enabled = seq is not None and \
            path_or_none(p.mentionsPath) is not None
        hasResults = p.resultsTable is not None
        for w in (self.ui.sortByConfidenceButton, self.ui.sortByTimeButton, self.ui.acceptButton,
                  self.ui.correctButton, self.ui.clearReviewButton, self.ui.exportButton,
                  self.ui.addToCohortButton, self.ui.labelWholeButton):
            w.enabled = hasResults
        hasTimeline = p.timelineTable is not None
        self.ui.acceptRunsButton.enabled = hasTimeline
        self.ui.correctRunsButton.enabled = hasTimeline
        if hasResults and self.ui.reviewLabelComboBox.count == 0:
            self._fillLabelCombo()
        if hasResults:
            self._showReviewCounts()

    def _fillLabelCombo(self) -> None:
        labelset = self.logic.labelsetForResults(self._parameterNode.resultsTable)
        self.ui.reviewLabelComboBox.clear()
        for lab in labelset.labels:
            self.ui.reviewLabelComboBox.addItem(lab.name, lab.id)

    def _showReviewCounts(self) -> None:
        try:
            counts = self.logic.reviewTable(self._parameterNode.resultsTable).counts()
        except Exception:  # a table being edited may be momentarily inconsistent
            return
        self.ui.reviewStatusLabel.text = _("{pending} pending, {accepted} accepted, "
                                           "{corrected} corrected").format(**counts)

    def _selectedWindow(self) -> Optional[int]:
        """The window of the selected results row (rows may be sorted)."""
        view = self.ui.resultsTableView
        table = self._parameterNode.resultsTable if self._parameterNode else None
        if table is None:
            return None
        indexes = view.selectionModel().selectedIndexes()
        if not indexes:
            return None
        col = self.logic.columnIndex(table, "window")
        text = indexes[0].sibling(indexes[0].row(), col).data()
        try:
            return int(str(text))
        except ValueError:
            return None

    # ------------------------------------------------------------------ inputs
    def onChooseFramesFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     _("Folder of numbered frames"))
        if folder:
            self._parameterNode.recordingPath = pathlib.Path(folder)

    def onLoadProcedure(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=False):
            return
        progress = slicer.util.createProgressDialog(windowTitle=_("Loading procedure"),
                                                    labelText=_("Reading frames..."), maximum=100)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to load the procedure."),
                                                 waitCursor=True):
                seq = self.logic.loadProcedure(
                    p.recordingPath, audioPath=path_or_none(p.audioPath),
                    audioOffsetS=p.audioOffsetS if path_or_none(p.audioPath) else None,
                    fps=p.framesFps, progressCallback=self._progressReporter(progress),
                    shouldStop=lambda: progress.wasCanceled)
                if seq is None:
                    return
                p.inputSequence = seq
                proc = self.logic.procedureForSequence(seq)
                if proc.mentions:
                    p.mentionsTable = self.logic.mentionsToTable(proc.mentions, seq)
        finally:
            progress.close()

    def onSetSequenceAudio(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to set the audio."), waitCursor=True):
            self.logic.setSequenceAudio(p.inputSequence, p.audioPath, p.audioOffsetS)
        self._updateGui()

    # ------------------------------------------------------------------ mentions
    def onLoadMentions(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=False):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to read the mentions."), waitCursor=True):
            p.mentionsTable = self.logic.mentionsFromFile(p.inputSequence, p.mentionsPath,
                                                          p.mentionsTable)

    def onDetectMentions(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=True):
            return
        progress = slicer.util.createProgressDialog(windowTitle=_("Detecting mentions"),
                                                    labelText=_("Listening..."), maximum=100)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to detect mentions."), waitCursor=True):
                table = self.logic.detectMentions(
                    p.inputSequence, p.mentionsTable,
                    progressCallback=self._progressReporter(progress),
                    shouldStop=lambda: progress.wasCanceled,
                    checkpointPath=path_or_none(p.modelPath))
                if table is None:
                    slicer.util.showStatusMessage(_("Detection cancelled: the mentions are "
                                                    "unchanged."), 5000)
                else:
                    p.mentionsTable = table
        finally:
            progress.close()

    def onAddMention(self) -> None:
        self.ui.mentionsTableView.insertRow()

    def onDeleteMention(self) -> None:
        self.ui.mentionsTableView.deleteRow()

    # ------------------------------------------------------------------ training
    def onTrain(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=True):
            return
        cohort = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Cohort folder (one sub-folder per procedure)"),
            str(path_or_none(p.cohortFolder) or ""))
        if not cohort:
            return
        suggested = str(path_or_none(p.modelPath) or os.path.join(cohort, "model.pt"))
        out = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save the model as"),
                                             suggested, _("Model checkpoints (*.pt)"))
        if not out:
            return
        self._trainingLog = ""
        self.ui.trainingLogTextEdit.clear()
        self.ui.trainingProgressBar.setValue(0)
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            self.logic.startTraining(
                cohort, out, epochs=p.trainEpochs, imageSize=p.trainImageSize.strip() or None,
                device=p.device, logCallback=self._onTrainingLog,
                progressCallback=self._onTrainingProgress,
                finishedCallback=lambda ok, path=out: self._onTrainingFinished(ok, path))
            self.ui.trainButton.enabled = False
            self.ui.cancelTrainingButton.enabled = True

    def onCancelTraining(self) -> None:
        self.logic.cancelTraining()

    def _onTrainingLog(self, line: str) -> None:
        self.ui.trainingLogTextEdit.appendPlainText(line)

    def _onTrainingProgress(self, fraction: float, description: str) -> None:
        self.ui.trainingProgressBar.setValue(int(round(100 * fraction)))
        self.ui.trainingProgressBar.setFormat(f"{description} %p%" if description else "%p%")

    def _onTrainingFinished(self, ok: bool, modelPath: str) -> None:
        self.ui.trainButton.enabled = True
        self.ui.cancelTrainingButton.enabled = False
        if ok:
            self.ui.trainingProgressBar.setValue(100)
            if self._parameterNode:
                self._parameterNode.modelPath = pathlib.Path(modelPath)
            slicer.util.showStatusMessage(_("Training finished: {path}").format(path=modelPath),
                                          5000)
        else:
            slicer.util.warningDisplay(_("Training stopped or failed; see the training log."))

    # ------------------------------------------------------------------ labelling
    def _progressReporter(self, progress) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            progress.maximum = max(1, total)
            progress.value = done
            progress.labelText = _("{done} of {total}").format(done=done, total=total)
            slicer.app.processEvents()
        return report

    def onApplyButton(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=True):
            return
        progress = slicer.util.createProgressDialog(windowTitle=_("Labelling"),
                                                    labelText=_("Loading the model..."),
                                                    maximum=100)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to label the procedure."),
                                                 waitCursor=True):
                results = self.logic.label(
                    p.inputSequence, p.mentionsTable, p.modelPath, device=p.device,
                    withHeatMaps=p.withHeatMaps, resultsTable=None,
                    progressCallback=self._progressReporter(progress),
                    shouldStop=lambda: progress.wasCanceled,
                    heatThreshold=p.heatThreshold, heatOpacity=p.heatOpacity)
                p.resultsTable = results
                self._fillLabelCombo()
                if results.GetAttribute(ATTR_PREFIX + "Cancelled") == "true":
                    slicer.util.showStatusMessage(_("Labelling cancelled: the windows done so "
                                                    "far are kept."), 5000)
        finally:
            progress.close()

    def onHeatDisplayChanged(self, value: float) -> None:
        p = self._parameterNode
        if p and p.resultsTable:
            self.logic.showHeatMap(p.resultsTable, threshold=p.heatThreshold, opacity=p.heatOpacity)

    # ------------------------------------------------------------------ review
    def onResultSelectionChanged(self) -> None:
        window = self._selectedWindow()
        if window is None:
            return
        self.logic.jumpToWindow(self._parameterNode.resultsTable, window)
        row = self.logic.reviewTable(self._parameterNode.resultsTable).row(window)
        index = self.ui.reviewLabelComboBox.findData(row.final_label)
        if index >= 0:
            self.ui.reviewLabelComboBox.currentIndex = index

    def _review(self, action: str) -> None:
        window = self._selectedWindow()
        if window is None:
            slicer.util.warningDisplay(_("Select a window in the results table first."))
            return
        table = self._parameterNode.resultsTable
        with slicer.util.tryWithErrorDisplay(_("Failed to review the window.")):
            if action == "accept":
                self.logic.acceptWindow(table, window)
            elif action == "correct":
                self.logic.correctWindow(table, window, self.ui.reviewLabelComboBox.currentData)
            else:
                self.logic.clearReview(table, window)
        self._showReviewCounts()

    def onAccept(self) -> None:
        self._review("accept")

    def onCorrect(self) -> None:
        self._review("correct")

    def onClearReview(self) -> None:
        self._review("clear")

    def onSortByConfidence(self) -> None:
        self.logic.sortResults(self._parameterNode.resultsTable, "confidence")

    def onSortByTime(self) -> None:
        self.logic.sortResults(self._parameterNode.resultsTable, "time")

    # ------------------------------------------------------------------ whole procedure
    def onLabelWhole(self) -> None:
        p = self._parameterNode
        if not self.logic.setupPythonRequirements(needTorch=True):
            return
        progress = slicer.util.createProgressDialog(windowTitle=_("Labelling the whole procedure"),
                                                    labelText=_("Scoring the frames..."),
                                                    maximum=100)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to label the whole procedure."),
                                                 waitCursor=True):
                timeline = self.logic.labelWhole(
                    p.resultsTable, path_or_none(p.frameModelPath), stride=p.wholeStride,
                    progressCallback=self._progressReporter(progress),
                    shouldStop=lambda: progress.wasCanceled, timelineTable=p.timelineTable)
                p.timelineTable = timeline
                self.ui.timelineTableView.setMRMLTableNode(timeline)
                if timeline.GetAttribute(ATTR_PREFIX + "Cancelled") == "true":
                    slicer.util.showStatusMessage(_("Cancelled: the frames scored so far are "
                                                    "labelled."), 5000)
        finally:
            progress.close()

    def _selectedRuns(self) -> list:
        table = self._parameterNode.timelineTable if self._parameterNode else None
        if table is None:
            return []
        col = self.logic.columnIndex(table, "run")
        rows = sorted({i.row() for i in self.ui.timelineTableView.selectionModel().selectedIndexes()})
        runs = []
        for r in rows:
            index = self.ui.timelineTableView.model().index(r, col)
            try:
                runs.append(int(str(index.data())))
            except ValueError:
                pass
        return runs

    def onTimelineSelectionChanged(self) -> None:
        runs = self._selectedRuns()
        if runs:
            self.logic.jumpToRun(self._parameterNode.timelineTable, runs[0])

    def onAcceptRuns(self) -> None:
        runs = self._selectedRuns()
        if not runs:
            slicer.util.warningDisplay(_("Select runs in the timeline first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to review the runs.")):
            self.logic.reviewRuns(self._parameterNode.timelineTable, runs)

    def onCorrectRuns(self) -> None:
        runs = self._selectedRuns()
        if not runs:
            slicer.util.warningDisplay(_("Select runs in the timeline first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to review the runs.")):
            self.logic.reviewRuns(self._parameterNode.timelineTable, runs,
                                  self.ui.reviewLabelComboBox.currentData)

    # ------------------------------------------------------------------ export
    def onExport(self) -> None:
        p = self._parameterNode
        folder = path_or_none(p.exportFolder)
        if folder is None:
            slicer.util.warningDisplay(_("Choose an export folder first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            files = self.logic.exportResults(p.resultsTable, folder / "slicer_files",
                                             folder / "dataset")
            slicer.util.infoDisplay(_("Exported {n} files to {folder}").format(
                n=len(files), folder=folder))

    def onAddToCohort(self) -> None:
        p = self._parameterNode
        cohort = path_or_none(p.cohortFolder)
        if cohort is None:
            slicer.util.warningDisplay(_("Choose a cohort folder first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the procedure to the cohort."),
                                             waitCursor=True):
            dest = self.logic.addToCohort(p.resultsTable, cohort)
            slicer.util.infoDisplay(_("Added the reviewed procedure as {dest}. Train from "
                                      "this cohort to use the corrections.").format(dest=dest))


#
# Dependencies
#


class EUSVoiceLabelDependencies:
    """The module's Python dependencies, installed on first use and only with the user's
    consent (never at import): torch through the PyTorch extension, the rest from
    ``Resources/requirements.txt``."""

    def __init__(self) -> None:
        self._checked = False  # requirements.txt checked in this session

    def ensure(self, needTorch: bool = True) -> bool:
        """Make sure the Python packages are there, asking before installing anything.

        torch comes from the PyTorch extension (``PyTorchUtils``); the other packages from
        ``Resources/requirements.txt`` through ``slicer.packaging.pip_ensure`` (Slicer 5.12+)
        or ``slicer.util.pip_install`` after a confirmation (5.10).

        Returns:
            True when everything is available; False (after telling the user why) when an
            install was declined or failed.
        """
        try:
            if needTorch:
                self._ensureTorch()
            if not self._checked:
                self._ensureRequirements()
                self._checked = True
        except InstallError as exc:
            slicer.util.errorDisplay(str(exc))
            return False
        return True

    def _ensureTorch(self) -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            em = slicer.app.extensionsManagerModel()
            if slicer.util.confirmOkCancelDisplay(
                    _("EUSVoiceLabel needs the PyTorch extension. Install it now? Slicer "
                      "restarts afterwards.")):
                em.interactive = False
                if em.installExtensionFromServer("PyTorch", True):
                    raise InstallError(_("PyTorch extension installed: restart Slicer."))
                raise InstallError(_("Installing the PyTorch extension failed. Install it from "
                                     "the Extensions Manager, then restart Slicer."))
            raise InstallError(_("EUSVoiceLabel needs the PyTorch extension: install it from "
                                 "the Extensions Manager."))
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not slicer.util.confirmOkCancelDisplay(
                    _("EUSVoiceLabel needs PyTorch, which is not installed yet. Download and "
                      "install it now (this can take several minutes)?")):
                raise InstallError(_("PyTorch is required: labelling and training are not "
                                     "available until it is installed."))
            try:
                torchLogic.installTorch(askConfirmation=False,
                                        torchVersionRequirement=TORCH_REQUIREMENT)
            except Exception as exc:
                raise InstallError(_("Installing PyTorch failed: {error}").format(error=exc))

    def _ensureRequirements(self) -> None:
        requirementsPath = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
        if importlib_util.find_spec("slicer.packaging") is not None:  # Slicer 5.12+
            # Not "import slicer.packaging": that would make "slicer" a local name of this
            # method and break the Slicer 5.10 branch below.
            importlib.import_module("slicer.packaging")
            requirements = slicer.packaging.load_requirements(requirementsPath)
            try:
                slicer.packaging.pip_ensure(requirements, requester="EUSVoiceLabel",
                                            skip_packages=["torch", "torchvision", "torchaudio"])
            except RuntimeError as exc:
                raise InstallError(_("Required Python packages were not installed ({error}).")
                                   .format(error=exc))
            except Exception as exc:
                raise InstallError(_("Installing Python packages failed: {error}")
                                   .format(error=exc))
            return
        # Slicer 5.10: check, ask, install (the check uses only the standard library).

        missing = missing_requirements(read_requirements(requirementsPath))
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("EUSVoiceLabel needs these Python packages: {packages}. Install them now?")
                .format(packages=", ".join(missing))):
            raise InstallError(_("Required Python packages were not installed: {packages}")
                               .format(packages=", ".join(missing)))
        try:
            slicer.util.pip_install(missing)
        except Exception as exc:
            raise InstallError(_("Installing Python packages failed: {error}").format(error=exc))


#
# EUSVoiceLabelLogic
#


class _TrainingProcess:
    """``PythonSlicer -m EUSVoiceLabelLib train ...`` as a non-blocking ``qt.QProcess``.

    Works on every Slicer 5.x (``launchConsoleProcess(blocking=False)`` exists only from 5.12);
    its output feeds a log callback line by line and a progress callback with the JSON
    progress lines the command prints (``--progress json``).
    """

    def __init__(self, program: str, args: list, logCallback, progressCallback,
                 finishedCallback) -> None:
        self.logCallback = logCallback
        self.progressCallback = progressCallback
        self.finishedCallback = finishedCallback
        self._buffer = ""
        self.cancelled = False
        self.process = qt.QProcess()
        self.process.setProcessChannelMode(qt.QProcess.MergedChannels)
        self.process.setWorkingDirectory(MODULE_DIR)
        env = qt.QProcessEnvironment()
        for key, value in slicer.util.startupEnvironment().items():
            env.insert(key, value)
        # The library ships next to this file: make it importable in the child.
        env.insert("PYTHONPATH", os.pathsep.join(
            [MODULE_DIR] + [v for v in [env.value("PYTHONPATH")] if v]))
        env.insert("PYTHONUNBUFFERED", "1")
        self.process.setProcessEnvironment(env)
        self.process.connect("readyReadStandardOutput()", self._onOutput)
        self.process.connect("finished(int,QProcess::ExitStatus)", self._onFinished)
        self.process.start(program, args)

    def isRunning(self) -> bool:
        return self.process.state() != qt.QProcess.NotRunning

    def cancel(self) -> None:
        if self.isRunning():
            self.cancelled = True
            self.process.kill()

    def _onOutput(self) -> None:
        data = self.process.readAllStandardOutput().data()
        chunk = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        lines, self._buffer = split_log_lines(self._buffer + chunk)
        for line in lines:
            event = parse_progress_line(line)
            if event is not None and self.progressCallback:
                self.progressCallback(event.fraction, event.task)
            if self.logCallback and (event is None or event.state == "end"):
                self.logCallback(line if event is None else event.text())

    def _onFinished(self, exitCode, exitStatus) -> None:
        if self._buffer.strip() and self.logCallback:
            self.logCallback(self._buffer)
        self._buffer = ""
        ok = exitCode == 0 and not self.cancelled
        if self.logCallback:
            self.logCallback(_("Training finished.") if ok else
                             _("Training cancelled.") if self.cancelled else
                             _("Training failed (exit code {code}).").format(code=exitCode))
        if self.finishedCallback:
            self.finishedCallback(ok)


class EUSVoiceLabelLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable in batch from Slicer's Python console.

    Methods take and return MRML nodes.  A typical session::

        logic = slicer.util.getModuleLogic("EUSVoiceLabel")
        frames = logic.loadProcedure("/data/cohort/patient01")        # vtkMRMLSequenceNode
        mentions = logic.mentionsFromFile(frames, "/data/cohort/patient01/mentions.csv")
        results = logic.label(frames, mentions, "/data/model.pt")      # vtkMRMLTableNode
        logic.exportResults(results, "/data/out/patient01", "/data/out/dataset")

    Progress goes out through ``progressCallback(done, total)`` and labelling stops at the next
    window when ``shouldStop()`` returns True.  Errors are ``EUSVoiceLabelLib`` errors that
    name the file at fault.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._procedures = {}   # sequence node ID -> Procedure
        self._results = {}      # results table node ID -> LabelResult
        self._whole = {}        # timeline table node ID -> (WholeResult, unreviewed RunReview)
        self._model = None      # (path, device, mtime, LabelModel)
        self._training = None
        self._dependencies = EUSVoiceLabelDependencies()

    def getParameterNode(self):
        return EUSVoiceLabelParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    def setupPythonRequirements(self, needTorch: bool = True) -> bool:
        """Make sure the Python packages are there, asking before installing anything
        (:class:`EUSVoiceLabelDependencies`).  Returns False (after telling the user why)
        when an install was declined or failed."""
        return self._dependencies.ensure(needTorch)

    # ------------------------------------------------------------------ procedures
    def loadProcedure(self, recordingPath, audioPath=None, audioOffsetS=None, fps: float = FPS,
                      mentionsPath=None, crop=None, name: Optional[str] = None,
                      progressCallback=None, shouldStop=None, confirmLarge: bool = True
                      ) -> Optional[vtkMRMLSequenceNode]:
        """Load a recording into a volume sequence with a sequence browser.

        Args:
            recordingPath: a procedure folder (docs/contracts.md: its audio, offset, crop and
                mentions are used), a video file, a folder of numbered frames or a .seq.nrrd.
            audioPath, audioOffsetS: the audio file and its offset (audio time = video time +
                offset) when not taken from the procedure folder / the video's own track.
            fps: frame rate of a frames folder.
            mentionsPath: a mentions CSV or SRT/WebVTT transcript.
            crop: [x, y, w, h] of the image region to use (default: the central 690x350).
            name: node name (default: the recording's name).
            progressCallback, shouldStop: progress (frames) and cancellation.
            confirmLarge: ask before loading more than 4 GiB of frames.

        Returns:
            The frames as a ``vtkMRMLSequenceNode`` of single-slice scalar volumes (cropped
            grey frames on the 25 fps grid, index "time" in s, DICOM-cine geometry), shown in
            the slice views with its browser; None when cancelled.  The audio path and offset
            are stored as node attributes so a saved scene reopens with them.
        """
        proc = procedure_from_files(recordingPath, audio=audioPath, audio_offset_s=audioOffsetS,
                                    fps=fps, mentions=mentionsPath, crop=crop)
        w, h = proc.frame_size
        nbytes = proc.n_frames * w * h
        if confirmLarge and nbytes > LARGE_SEQUENCE_BYTES and not slicer.util.confirmOkCancelDisplay(
                _("The recording holds {gb:.1f} GB of frames. Load it anyway?").format(
                    gb=nbytes / 1e9)):
            return None
        seq = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSequenceNode", slicer.mrmlScene.GenerateUniqueName(name or proc.name))
        seq.SetIndexName("time")
        seq.SetIndexUnit("s")
        seq.SetIndexType(seq.NumericIndex)
        if not self._copyFrames(proc, seq, CallbackProgress(progressCallback, shouldStop)):
            slicer.mrmlScene.RemoveNode(seq)
            return None
        storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
        seq.SetAndObserveStorageNodeID(storage.GetID())
        seq.SetAttribute(ATTR_RECORDING, str(recordingPath))
        seq.SetAttribute(ATTR_FPS, str(fps))
        seq.SetAttribute(ATTR_CROP, format_crop(proc.crop))
        self._storeAudio(seq, proc.audio_path, proc.audio_offset_s)
        self._procedures[seq.GetID()] = proc
        self.browserForSequence(seq, show=True, fps=proc.fps)
        return seq

    @staticmethod
    def _copyFrames(proc, seq, progress) -> bool:
        """Copy the procedure's frames into the sequence (False when cancelled)."""
        temp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "EUSVoiceLabelTemp")
        temp.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(cine_ijk_to_ras(
            proc.pixel_spacing_mm)))
        chunk = 100
        try:
            with progress.task("load", total=proc.n_frames, unit="frame") as task:
                for start in range(0, proc.n_frames, chunk):
                    if progress.cancelled():
                        return False
                    for k, frame in enumerate(proc.frames(start, start + chunk)):
                        slicer.util.updateVolumeFromArray(temp, frame[None])
                        seq.SetDataNodeAtValue(temp, index_value((start + k) / proc.fps))
                    task.update(min(start + chunk, proc.n_frames))
        finally:
            slicer.mrmlScene.RemoveNode(temp)
        return True

    def _storeAudio(self, seq, audioPath, offset: float) -> None:
        seq.SetAttribute(ATTR_AUDIO, str(audioPath) if audioPath else "")
        seq.SetAttribute(ATTR_OFFSET, repr(float(offset)))
        parameterNode = self.getParameterNode()
        if parameterNode.inputSequence is seq or parameterNode.inputSequence is None:
            if audioPath:
                parameterNode.audioPath = pathlib.Path(audioPath)
            parameterNode.audioOffsetS = float(offset)

    def setSequenceAudio(self, sequenceNode, audioPath, audioOffsetS: float = 0.0,
                         crop=None) -> vtkMRMLSequenceNode:
        """Attach an audio file (and offset: audio time = video time + offset) to a volume
        sequence already in the scene, e.g. a DICOM cine loop.  Stored as node attributes, so
        a saved scene keeps them.  Returns the sequence node."""
        if sequenceNode is None:
            raise ValueError("no volume sequence given")
        audio = path_or_none(audioPath)
        if audio is None or not audio.is_file():
            raise MediaError("audio file not found", audio, "pick the recording's audio file")
        self._storeAudio(sequenceNode, audio, audioOffsetS)
        if crop is not None:
            sequenceNode.SetAttribute(ATTR_CROP, format_crop(crop))
        self._procedures.pop(sequenceNode.GetID(), None)
        return sequenceNode

    def procedureForSequence(self, sequenceNode):
        """The library ``Procedure`` behind a volume sequence: the files it was loaded from,
        or (for a sequence made elsewhere) its frames read lazily from the scene plus the
        audio stored on the node."""
        key = sequenceNode.GetID()
        if key in self._procedures:
            return self._procedures[key]
        crop = parse_crop(sequenceNode.GetAttribute(ATTR_CROP))
        audio = sequenceNode.GetAttribute(ATTR_AUDIO) or None
        offsetText = sequenceNode.GetAttribute(ATTR_OFFSET)
        offset = float(offsetText) if offsetText else None
        recording = sequenceNode.GetAttribute(ATTR_RECORDING)
        if recording and os.path.exists(recording):
            proc = procedure_from_files(recording, audio=audio, audio_offset_s=offset,
                                        fps=float(sequenceNode.GetAttribute(ATTR_FPS) or FPS),
                                        crop=crop)
        else:
            proc = self._procedureFromScene(sequenceNode, crop, audio, offset or 0.0)
        self._procedures[key] = proc
        return proc

    def _procedureFromScene(self, sequenceNode, crop, audio, offset: float):
        """A procedure whose frames are read lazily from the sequence's volumes."""
        n = sequenceNode.GetNumberOfDataNodes()
        if n == 0:
            raise ValueError(f"sequence {sequenceNode.GetName()} has no frames")
        first = sequenceNode.GetNthDataNode(0)
        if not first.IsA("vtkMRMLVolumeNode"):
            raise ValueError(f"sequence {sequenceNode.GetName()} does not hold volumes")
        width, height = first.GetImageData().GetDimensions()[:2]

        def getFrame(i: int):
            return slicer.util.arrayFromVolume(sequenceNode.GetNthDataNode(i))

        # The frames of a loaded procedure are already cropped: not again (sequence_crop).
        return procedure_from_frames(getFrame, self._masterTimes(sequenceNode), width, height,
                                     sequenceNode.GetName(), audio=audio, audio_offset_s=offset,
                                     crop=sequence_crop(crop, width, height))

    def _browserFps(self, sequenceNode) -> float:
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(sequenceNode)
        fps = browser.GetPlaybackRateFps() if browser else 0.0
        return fps if fps > 0 else FPS

    def browserForSequence(self, sequenceNode, show: bool = True,
                           fps: Optional[float] = None) -> vtkMRMLSequenceBrowserNode:
        """The browser that plays ``sequenceNode`` (created, with the frames shown in the
        slice views, if there is none)."""
        logic = slicer.modules.sequences.logic()
        browser = logic.GetFirstBrowserNodeForSequenceNode(sequenceNode)
        if browser is None:
            browser = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSequenceBrowserNode",
                slicer.mrmlScene.GenerateUniqueName(sequenceNode.GetName() + " browser"))
            browser.SetPlaybackRateFps(fps or FPS)
            browser.AddSynchronizedSequenceNode(sequenceNode)
            browser.SetAndObserveMasterSequenceNodeID(sequenceNode.GetID())
            logic.UpdateProxyNodesFromSequences(browser)
        if show:
            proxy = browser.GetProxyNode(sequenceNode)
            if proxy is not None and proxy.IsA("vtkMRMLVolumeNode"):
                slicer.util.setSliceViewerLayers(background=proxy, fit=True)
            if slicer.app.mainWindow() is not None:
                slicer.modules.sequences.showSequenceBrowser(browser)
        return browser

    # ------------------------------------------------------------------ mentions
    def _labelset(self, sequenceNode=None):
        if sequenceNode is not None:
            try:
                return self.procedureForSequence(sequenceNode).labelset
            except Exception:
                pass
        return LabelSet.default()

    def mentionsToTable(self, mentions, sequenceNode=None, tableNode=None) -> vtkMRMLTableNode:
        """Write mentions into an editable table node (time_s, label, end_s, text,
        confidence, source); a new table when ``tableNode`` is None."""
        if tableNode is None:
            base = (sequenceNode.GetName() + " mentions") if sequenceNode else "EUS mentions"
            tableNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(base))
        tableNode.SetAttribute(ATTR_ROLE, "mentions")
        if sequenceNode is not None:
            tableNode.SetNodeReferenceID(REF_FRAMES, sequenceNode.GetID())
        self.writeTable(tableNode, MENTION_COLUMNS, mentions_to_rows(mentions))
        return tableNode

    def mentionsFromTable(self, tableNode, labelset=None) -> list:
        """The (possibly edited) mentions of a table node as library ``Mention`` objects.

        Raises:
            MentionsError: naming the row at fault.
        """
        columns, rows = self.readTable(tableNode)
        return mentions_from_rows(columns, rows, labelset or self._labelset(),
                                  where=f"table {tableNode.GetName()}")

    def mentionsFromFile(self, sequenceNode, path, tableNode=None) -> vtkMRMLTableNode:
        """Read a mentions CSV or an SRT/WebVTT transcript (times on the audio clock are
        shifted by the sequence's audio offset) into a mentions table."""
        proc = self.procedureForSequence(sequenceNode)
        mentions = read_mentions(path, proc.labelset, offset_s=proc.audio_offset_s)
        proc.check_mentions(mentions)
        return self.mentionsToTable(mentions, sequenceNode, tableNode)

    def detectMentions(self, sequenceNode, tableNode=None, progressCallback=None,
                       shouldStop=None, checkpointPath=None) -> Optional[vtkMRMLTableNode]:
        """Find spoken landmark names in the sequence's audio (offline keyword spotting) and
        put them in a mentions table.

        ``progressCallback(done, total)`` gets seconds of audio; when ``shouldStop()`` returns
        True detection stops, the table is left as it was and None is returned.  With the
        checkpoint of a model that holds a mention verifier (``checkpointPath``), every
        candidate is checked by it, as ``eusvoicelabel label --mentions auto`` does.
        """
        # deferred: pocketsphinx (requirements.txt)
        from EUSVoiceLabelLib.speech.detect import DetectionCancelled
        from EUSVoiceLabelLib.speech.verify import find_mentions

        proc = self.procedureForSequence(sequenceNode)
        verifier = None
        if checkpointPath is not None and pathlib.Path(checkpointPath).is_file():
            verifier = self.loadModel(checkpointPath).verifier
        try:
            # In this process (workers=1): worker processes would be started from Slicer's
            # own executable.
            found = find_mentions(proc, proc.labelset, verifier, workers=1,
                                  progress=CallbackProgress(progressCallback, shouldStop))
        except DetectionCancelled:
            return None
        return self.mentionsToTable(found, sequenceNode, tableNode)

    # ------------------------------------------------------------------ tables
    @staticmethod
    def writeTable(tableNode, columns, rows) -> None:
        """Replace a table node's content with string columns."""
        table = vtk.vtkTable()
        for c, name in enumerate(columns):
            arr = vtk.vtkStringArray()
            arr.SetName(name)
            for row in rows:
                arr.InsertNextValue(str(row[c]) if c < len(row) else "")
            table.AddColumn(arr)
        tableNode.SetAndObserveTable(table)
        tableNode.Modified()

    @staticmethod
    def readTable(tableNode) -> tuple:
        """(column names, rows of strings) of a table node."""
        columns = [tableNode.GetColumnName(c) for c in range(tableNode.GetNumberOfColumns())]
        rows = [[tableNode.GetCellText(r, c) for c in range(len(columns))]
                for r in range(tableNode.GetNumberOfRows())]
        return columns, rows

    @staticmethod
    def columnIndex(tableNode, name: str) -> int:
        for c in range(tableNode.GetNumberOfColumns()):
            if tableNode.GetColumnName(c) == name:
                return c
        raise KeyError(f"table {tableNode.GetName()} has no column {name!r}")

    # ------------------------------------------------------------------ labelling
    def loadModel(self, checkpointPath, device: str = "auto"):
        """The ``LabelModel`` of a checkpoint (kept while the file is unchanged)."""
        from EUSVoiceLabelLib.labelling.run import LabelModel  # deferred: torch

        path = path_or_none(checkpointPath)
        if path is None:
            raise CheckpointError("no model checkpoint given", None,
                                  "choose a .pt file or train a model")
        mtime = path.stat().st_mtime if path.is_file() else None
        key = (str(path), device, mtime)
        if self._model is None or self._model[0] != key:
            self._model = (key, LabelModel.load(path, device=device))
        return self._model[1]

    def label(self, sequenceNode, mentionsTable, checkpointPath, device: str = "auto",
              withHeatMaps: bool = True, resultsTable=None, progressCallback=None,
              shouldStop=None, heatThreshold: float = DISPLAY_THRESHOLD,
              heatOpacity: float = 0.5
              ) -> vtkMRMLTableNode:
        """Label every mention window of a volume sequence.

        Args:
            sequenceNode: the frames (from :meth:`loadProcedure`, or any volume sequence with
                audio set by :meth:`setSequenceAudio`).
            mentionsTable: the mentions table (from :meth:`mentionsFromFile`,
                :meth:`detectMentions` or :meth:`mentionsToTable`), edits included.
            checkpointPath: a model from ``eusvoicelabel train`` / "Train from cohort folder".
            device: "auto", "cpu" or "cuda".
            withHeatMaps: compute Grad-CAM heat maps, evidence regions and peak points.
            heatThreshold, heatOpacity: heat-map values below ``heatThreshold`` are transparent;
                the layer is drawn at ``heatOpacity``.
            resultsTable: table to fill (default: a new one).
            progressCallback: ``f(done, total)`` after each window.
            shouldStop: checked before each window; the windows done so far are kept.

        Returns:
            The results table (window, time_s, end_s, spoken_label, predicted_label,
            confidence, reviewed_label, status, label, label_confidence, needs_review: the
            network's label and the window's label fused with what was said; flagged windows
            first, then the least confident).  Its node references lead to the outputs,
            all synchronised in the frames' browser: the heat-map sequence (foreground,
            Inferno, window 0-1, low values transparent), the segmentation sequence (one segment
            per landmark: the evidence region), the point-list sequence (each window's heat-map
            peak, labelled, shown only during its window) and the text-node sequence (each
            frame's label); see :meth:`outputNodes`.
        """
        from EUSVoiceLabelLib.labelling.run import label_procedure  # deferred: torch

        if sequenceNode is None or mentionsTable is None:
            raise ValueError("a volume sequence and a mentions table are needed")
        model = self.loadModel(checkpointPath, device)
        proc = self.procedureForSequence(sequenceNode)
        mentions = self.mentionsFromTable(mentionsTable, model.labelset)
        if not mentions:
            raise MentionsError("no mentions to label", f"table {mentionsTable.GetName()}",
                                "load, detect or type the spoken landmark names first")
        result = label_procedure(proc, model, mentions, with_cam=withHeatMaps,
                                 progress=CallbackProgress(progressCallback, shouldStop))
        return self.resultsToNodes(result, sequenceNode, mentionsTable, resultsTable,
                                   checkpointPath, heatThreshold, heatOpacity)

    def resultsToNodes(self, result, sequenceNode, mentionsTable=None, resultsTable=None,
                       checkpointPath=None, heatThreshold: float = DISPLAY_THRESHOLD,
                       heatOpacity: float = 0.5) -> vtkMRMLTableNode:
        """Turn a library ``LabelResult`` into the results table and the synchronised output
        sequences (see :meth:`label`)."""
        review = ReviewTable.from_windows(result.windows, result.labelset)
        if resultsTable is None:
            resultsTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode",
                slicer.mrmlScene.GenerateUniqueName(sequenceNode.GetName() + " labels"))
        resultsTable.SetAttribute(ATTR_ROLE, "results")
        resultsTable.SetAttribute(ATTR_PREFIX + "Cancelled", "true" if result.cancelled else "false")
        resultsTable.SetAttribute(ATTR_LABELSET, json.dumps(result.labelset.to_json()))
        if checkpointPath:
            resultsTable.SetAttribute(ATTR_MODEL, str(checkpointPath))
        # Review order: windows flagged for review first (the network disagrees with what was
        # said, the fused label is uncertain, or the detection was), then the least confident.
        self.writeTable(resultsTable, RESULT_COLUMNS, review.to_rows("confidence"))
        browser = self.browserForSequence(sequenceNode, show=False)
        resultsTable.SetNodeReferenceID(REF_FRAMES, sequenceNode.GetID())
        resultsTable.SetNodeReferenceID(REF_BROWSER, browser.GetID())
        if mentionsTable is not None:
            resultsTable.SetNodeReferenceID(REF_MENTIONS, mentionsTable.GetID())
        self._results[resultsTable.GetID()] = result
        self._removeOutputs(resultsTable, browser)
        with slicer.util.RenderBlocker():
            self._writeOutputs(result, sequenceNode, browser, resultsTable)
        self.showHeatMap(resultsTable, heatThreshold, heatOpacity)
        return resultsTable

    def _removeOutputs(self, resultsTable, browser) -> None:
        """Drop the outputs of an earlier run into the same table (labelling again)."""
        for key in WINDOW_OUTPUTS:
            self._removeSynchronized(browser, resultsTable.GetNodeReference(OUTPUT_ROLES[key]))

    @staticmethod
    def _removeSynchronized(browser, sequenceNode) -> None:
        """Remove an output sequence (and its proxy node) from the scene and the browser."""
        if sequenceNode is None:
            return
        proxy = browser.GetProxyNode(sequenceNode)
        browser.RemoveSynchronizedSequenceNode(sequenceNode.GetID())
        if proxy is not None:
            slicer.mrmlScene.RemoveNode(proxy)
        slicer.mrmlScene.RemoveNode(sequenceNode)

    def _masterTimes(self, sequenceNode):
        n = sequenceNode.GetNumberOfDataNodes()
        values = [sequenceNode.GetNthIndexValue(i) for i in range(n)]
        return sequence_times(values, sequenceNode.GetIndexUnit(), self._browserFps(sequenceNode))

    def _newOutputSequence(self, sequenceNode, name: str):
        seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                 slicer.mrmlScene.GenerateUniqueName(name))
        # Browsing requires the master's index name and unit.
        seq.SetIndexName(sequenceNode.GetIndexName())
        seq.SetIndexUnit(sequenceNode.GetIndexUnit())
        seq.SetIndexType(sequenceNode.GetIndexType())
        return seq

    def _writeOutputs(self, result, sequenceNode, browser, resultsTable) -> None:
        """Fill the per-window output sequences: an item where each window starts (its text,
        heat map, evidence region and peak point) and a blank one where it ends."""
        labelset = result.labelset
        items = overlay_items(result, self._masterTimes(sequenceNode))
        name = sequenceNode.GetName()
        overlayIjkToRas = self._overlayIjkToRas(sequenceNode, result.procedure.crop)
        w, h = result.procedure.frame_size
        haveCam = any(win.cam is not None for win in result.windows)
        suffixes = {"text": " label", "heatMap": " heat map", "segmentation": " evidence",
                    "points": " landmark points"}
        keys = WINDOW_OUTPUTS if haveCam else ("text",)
        sequences = {key: self._newOutputSequence(sequenceNode, name + suffixes[key])
                     for key in keys}
        temps = self._newOverlayNodes(labelset, overlayIjkToRas, (h, w), haveCam)
        try:
            for item in items:
                value = sequenceNode.GetNthIndexValue(item.item)
                win = item.window
                temps["text"].SetText(window_text(win, labelset) if win else "")
                temps["text"].SetAttribute(ATTR_WINDOW, str(win.index) if win else "")
                sequences["text"].SetDataNodeAtValue(temps["text"], value)
                if haveCam:
                    self._writeWindowOverlays(win, labelset, temps, overlayIjkToRas, (h, w))
                    for key in ("heatMap", "segmentation", "points"):
                        sequences[key].SetDataNodeAtValue(temps[key], value)
        finally:
            for node in temps.values():
                slicer.mrmlScene.RemoveNode(node)

        for key, seq in sequences.items():
            browser.AddSynchronizedSequenceNode(seq)
            resultsTable.SetNodeReferenceID(OUTPUT_ROLES[key], seq.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        for key in ("segmentation", "points"):
            proxy = browser.GetProxyNode(sequences[key]) if key in sequences else None
            if proxy is not None and proxy.GetDisplayNode() is None:
                proxy.CreateDefaultDisplayNodes()
            if key == "points" and proxy is not None:
                # Points of windows that need review are selected: drawn in the review colour.
                proxy.GetDisplayNode().SetColor(*POINT_COLOR)
                proxy.GetDisplayNode().SetSelectedColor(*REVIEW_POINT_COLOR)

    @staticmethod
    def _overlayIjkToRas(sequenceNode, crop) -> np.ndarray:
        """IJK-to-RAS of the overlays: the cropped region of the frames (the whole frame when
        the sequence holds the cropped frames, as "Load procedure" makes them)."""
        first = sequenceNode.GetNthDataNode(0)
        frameMatrix = vtk.vtkMatrix4x4()
        first.GetIJKToRASMatrix(frameMatrix)
        crop = sequence_crop(crop, *first.GetImageData().GetDimensions()[:2])
        return crop_ijk_to_ras(slicer.util.arrayFromVTKMatrix(frameMatrix), crop)

    @staticmethod
    def _newOverlayNodes(labelset, overlayIjkToRas, shape, withCam: bool) -> dict:
        """The temporary nodes that the output sequences copy at each item: a text node and,
        ``withCam``, a heat-map volume on the overlay geometry, a segmentation with one
        segment per landmark and a point list."""
        temps = {"text": slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTextNode")}
        if not withCam:
            return temps
        heat = temps["heatMap"] = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        heat.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(overlayIjkToRas))
        slicer.util.updateVolumeFromArray(heat, np.zeros((1, *shape), np.float32))
        seg = temps["segmentation"] = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(heat)
        for lab in labelset.labels:
            seg.GetSegmentation().AddEmptySegment(lab.id, lab.name, list(lab.color))
        temps["points"] = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        return temps

    @staticmethod
    def _writeWindowOverlays(win, labelset, temps, overlayIjkToRas, shape) -> None:
        """Put a window's heat map, evidence region and peak point (or nothing, for
        ``win`` None) into the temporary nodes that the output sequences copy."""
        cam = win.cam if (win is not None and win.cam is not None) else \
            np.zeros(shape, np.float32)
        slicer.util.updateVolumeFromArray(temps["heatMap"], cam.astype(np.float32)[None])
        for lab in labelset.labels:
            mask = win.region if (win is not None and win.label == lab.id
                                  and win.region is not None) else np.zeros(shape, bool)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                mask.astype(np.uint8)[None], temps["segmentation"], lab.id, temps["heatMap"])
        points = temps["points"]
        points.RemoveAllControlPoints()
        point = window_point(win, labelset) if win is not None else None
        if point is not None:
            ras = overlayIjkToRas @ np.array([point["col"], point["row"], 0.0, 1.0])
            i = points.AddControlPoint(ras[:3].tolist(), point["label"])
            points.SetNthControlPointDescription(i, point["description"])
            points.SetNthControlPointLocked(i, True)
            points.SetNthControlPointSelected(i, point["review"])

    def outputNodes(self, resultsTable) -> dict:
        """The nodes a results table belongs to: ``frames``, ``browser``, ``mentions``,
        ``heatMap``, ``segmentation``, ``points``, ``text`` (missing ones are None)."""
        return {key: resultsTable.GetNodeReference(role) for key, role in OUTPUT_ROLES.items()}

    def showHeatMap(self, resultsTable, threshold: float = DISPLAY_THRESHOLD,
                    opacity: float = 0.5) -> None:
        """Show the heat-map proxy over the frames: Inferno, window 0-1, values below
        ``threshold`` transparent, at ``opacity``."""
        nodes = self.outputNodes(resultsTable)
        browser, heatSeq, frames = nodes["browser"], nodes["heatMap"], nodes["frames"]
        if browser is None or heatSeq is None:
            return
        heat = browser.GetProxyNode(heatSeq)
        if heat is None:
            return
        if heat.GetDisplayNode() is None:
            heat.CreateDefaultDisplayNodes()
        display = heat.GetDisplayNode()
        display.SetAndObserveColorNodeID(INFERNO_COLOR_NODE_ID)
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(max(1e-3, float(threshold)))
        display.SetUpperThreshold(1.0)
        frameProxy = browser.GetProxyNode(frames) if frames is not None else None
        slicer.util.setSliceViewerLayers(background=frameProxy or "keep-current",
                                         foreground=heat, foregroundOpacity=float(opacity))

    # ------------------------------------------------------------------ review
    def labelsetForResults(self, resultsTable):
        """The vocabulary of a results table (the model's labels)."""
        result = self._results.get(resultsTable.GetID()) if resultsTable else None
        if result is not None:
            return result.labelset
        text = resultsTable.GetAttribute(ATTR_LABELSET) if resultsTable else None
        if text:
            return LabelSet.from_json(json.loads(text), "results table")
        return LabelSet.default()

    def reviewTable(self, resultsTable):
        """The review state of a results table (``EUSVoiceLabelLib.slicer.review.ReviewTable``)."""
        columns, rows = self.readTable(resultsTable)
        return ReviewTable.from_rows(columns, rows, self.labelsetForResults(resultsTable),
                                     where=f"table {resultsTable.GetName()}")

    def _setReview(self, resultsTable, window: int, change) -> None:
        review = self.reviewTable(resultsTable)
        row = change(review, window)
        wcol = self.columnIndex(resultsTable, "window")
        rcol = self.columnIndex(resultsTable, "reviewed_label")
        scol = self.columnIndex(resultsTable, "status")
        for r in range(resultsTable.GetNumberOfRows()):
            if resultsTable.GetCellText(r, wcol) == str(window):
                resultsTable.SetCellText(r, rcol, row.reviewed or "")
                resultsTable.SetCellText(r, scol, row.status)
        self._updateWindowText(resultsTable, window, row)

    def _updateWindowText(self, resultsTable, window: int, row) -> None:
        textSeq = self.outputNodes(resultsTable)["text"]
        result = self._results.get(resultsTable.GetID())
        if textSeq is None or result is None:
            return
        win = next((w for w in result.windows if w.index == window), None)
        if win is None:
            return
        for i in range(textSeq.GetNumberOfDataNodes()):
            node = textSeq.GetNthDataNode(i)
            if node.GetAttribute(ATTR_WINDOW) == str(window):
                node.SetText(window_text(win, result.labelset, row.reviewed))
        browser = self.outputNodes(resultsTable)["browser"]
        if browser is not None:
            slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)

    def acceptWindow(self, resultsTable, window: int) -> None:
        """Confirm the label of a window (fused with what was said; kept in the table)."""
        self._setReview(resultsTable, window, lambda t, w: t.accept(w))

    def correctWindow(self, resultsTable, window: int, label: str) -> None:
        """Set the label of a window (an id, display name or synonym; kept in the table)."""
        self._setReview(resultsTable, window, lambda t, w: t.correct(w, label))

    def clearReview(self, resultsTable, window: int) -> None:
        self._setReview(resultsTable, window, lambda t, w: t.clear(w))

    def sortResults(self, resultsTable, key: str = "confidence", ascending: bool = True) -> None:
        """Reorder the results rows by ``confidence`` (least confident first), ``time`` or
        ``window``; review state is kept."""
        review = self.reviewTable(resultsTable)
        self.writeTable(resultsTable, RESULT_COLUMNS, review.to_rows(key, ascending))

    def jumpToWindow(self, resultsTable, window: int) -> int:
        """Move the sequence browser to the first frame of a window; returns the item."""
        nodes = self.outputNodes(resultsTable)
        browser, frames = nodes["browser"], nodes["frames"]
        if browser is None or frames is None:
            return -1
        row = self.reviewTable(resultsTable).row(window)
        item = master_item_at(self._masterTimes(frames), row.time_s)
        browser.SetSelectedItemNumber(item)
        return item

    # ------------------------------------------------------------------ whole procedure
    def labelWhole(self, resultsTable, frameModelPath=None, stride: int = 1,
                   rejectBelow: Optional[float] = None, progressCallback=None,
                   shouldStop=None, timelineTable=None) -> vtkMRMLTableNode:
        """Label every ``stride``-th frame of the procedure of a results table (from
        :meth:`label`; its spoken windows keep their labels and anchor the rest), as
        ``eusvoicelabel label --whole`` does (docs/whole.md).

        Args:
            resultsTable: the results of :meth:`label`.
            frameModelPath: the frame classifier of ``eusvoicelabel train-frames`` (default:
                the model's path with ``.frames.pt`` in place of its suffix).
            stride, rejectBelow: as ``--stride`` and ``--reject-below``.
            progressCallback: ``f(done, total)`` as frames are scored.
            shouldStop: checked between chunks of frames; the frames done so far are kept.
            timelineTable: table to fill (default: a new one).

        Returns:
            The timeline table: one row per run of frames with one label and source (``run,
            start_s, end_s, label, confidence, source, frames, reviewed_label, status``).  A
            text-node sequence with each run's label (from its first frame) follows the
            frames' browser, so every frame shows its label.
        """
        # deferred: torch
        from EUSVoiceLabelLib.labelling.framemodel import (check_labelset,
                                                           default_frame_model_path,
                                                           load_frame_model)
        from EUSVoiceLabelLib.labelling.whole import (WholeSettings, anchors_from_windows,
                                                      label_whole)

        result = self._results.get(resultsTable.GetID())
        if result is None:
            raise ValueError("label the mention windows first (the results are not in memory)")
        if frameModelPath is None:
            model = resultsTable.GetAttribute(ATTR_MODEL)
            if not model:
                raise ValueError("give the frame model (from 'eusvoicelabel train-frames')")
            frameModelPath = default_frame_model_path(model)
        frameModel = load_frame_model(frameModelPath)
        check_labelset(frameModel, result.labelset, frameModelPath)
        anchors = anchors_from_windows(result.windows,
                                       self.reviewTable(resultsTable).final_labels(),
                                       result.labelset.ids)
        whole = label_whole(result.procedure, frameModel, anchors,
                            WholeSettings(stride=stride, reject_below=rejectBelow),
                            progress=CallbackProgress(progressCallback, shouldStop))
        frames = resultsTable.GetNodeReference(REF_FRAMES)
        if timelineTable is None:
            timelineTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode",
                slicer.mrmlScene.GenerateUniqueName(frames.GetName() + " timeline"))
        timelineTable.SetAttribute(ATTR_ROLE, "timeline")
        timelineTable.SetAttribute(ATTR_PREFIX + "Cancelled",
                                   "true" if whole.cancelled else "false")
        timelineTable.SetAttribute(ATTR_PREFIX + "Stride", str(stride))
        timelineTable.SetNodeReferenceID(REF_RESULTS, resultsTable.GetID())
        timelineTable.SetNodeReferenceID(REF_FRAMES, frames.GetID())
        # The runs are grouped once here: every review, jump and export reuses them.
        unreviewed = RunReview(runs_of(whole.rows()), whole.fps, stride, tuple(whole.ids))
        self._whole[timelineTable.GetID()] = (whole, unreviewed)
        self._showRunReview(timelineTable, unreviewed)
        return timelineTable

    def runReview(self, timelineTable) -> RunReview:
        """The review state of a timeline table (``EUSVoiceLabelLib.slicer.review.RunReview``),
        labels typed into its ``reviewed_label`` column included."""
        _, unreviewed = self._whole[timelineTable.GetID()]
        return unreviewed.with_table(*self.readTable(timelineTable))

    def _showRunReview(self, timelineTable, review: RunReview) -> None:
        """Write a run review into the timeline table and the frames' label text."""
        self.writeTable(timelineTable, TIMELINE_COLUMNS, review.table_rows())
        frames = timelineTable.GetNodeReference(REF_FRAMES)
        browser = self.browserForSequence(frames, show=False)
        self._removeSynchronized(browser, timelineTable.GetNodeReference(REF_WHOLE_TEXT))
        labelset = self.labelsetForResults(timelineTable.GetNodeReference(REF_RESULTS))
        seq = self._newOutputSequence(frames, frames.GetName() + " whole-procedure label")
        temp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTextNode")
        try:
            for item, text in review.text_items(self._masterTimes(frames), labelset):
                temp.SetText(text)
                seq.SetDataNodeAtValue(temp, frames.GetNthIndexValue(item))
        finally:
            slicer.mrmlScene.RemoveNode(temp)
        browser.AddSynchronizedSequenceNode(seq)
        timelineTable.SetNodeReferenceID(REF_WHOLE_TEXT, seq.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)

    def wholeFrameLabels(self, timelineTable) -> list:
        """Every labelled frame of a whole-procedure run (dicts with the columns of its
        ``frame_labels.csv``), the reviewed runs' frames with their reviewed label."""
        whole, _ = self._whole[timelineTable.GetID()]
        return self.runReview(timelineTable).frame_rows(whole.rows())

    def jumpToTime(self, timelineTable, timeS: float) -> int:
        """Move the frames' browser to the frame shown at ``timeS``; returns the item."""
        frames = timelineTable.GetNodeReference(REF_FRAMES)
        browser = self.browserForSequence(frames, show=False)
        item = master_item_at(self._masterTimes(frames), float(timeS))
        browser.SetSelectedItemNumber(item)
        return item

    def jumpToRun(self, timelineTable, run: int) -> int:
        """Move the browser to the first frame of a run of the timeline; returns the item."""
        return self.jumpToTime(timelineTable, self.runReview(timelineTable).start_s(run))

    def reviewRuns(self, timelineTable, runs, label: Optional[str] = None) -> None:
        """Accept (``label`` None: keep each run's label) or correct (to ``label``) several
        runs of frames at once; the timeline table and the label text follow."""
        review = self.runReview(timelineTable)
        review.review(runs, label)
        self._showRunReview(timelineTable, review)

    def acceptRun(self, timelineTable, run: int) -> None:
        """Accept the label of one run of frames."""
        self.reviewRuns(timelineTable, [run])

    def correctRun(self, timelineTable, run: int, label: str) -> None:
        """Correct the label of one run of frames (every frame of it)."""
        self.reviewRuns(timelineTable, [run], label)

    def exportWhole(self, timelineTable, path) -> pathlib.Path:
        """Write the whole-procedure ``frame_labels.csv`` with the reviewed runs (source
        ``reviewed``) to ``path`` (atomically; refused over an input or a file not ours)."""
        from EUSVoiceLabelLib.slicer.export import export_whole  # deferred: torch

        result = self._results[timelineTable.GetNodeReference(REF_RESULTS).GetID()]
        whole, _ = self._whole[timelineTable.GetID()]
        return export_whole(result, whole, self.wholeFrameLabels(timelineTable), path)

    # ------------------------------------------------------------------ export
    def exportResults(self, resultsTable, outputFolder, datasetFolder=None) -> dict:
        """Write the labelling outputs (``labels.csv`` with the reviewed labels,
        ``frame_labels.csv``, ``frames.seq.nrrd``, ``cam.seq.nrrd``, ``landmarks.seq.nrrd``,
        ``landmarks.csv``, ``landmarks.mrk.json``, ``landmark_points.seq.mrb``,
        ``scene.mrml``: the files of ``eusvoicelabel label``) and, with ``datasetFolder``, the labelled image dataset (the
        format of ``eusvoicelabel export``: ``images/<label>/*.png`` + ``labels.csv``).

        Returns:
            ``{name: path}`` of the written files.
        """
        # deferred: torch, Pillow, tqdm (requirements.txt)
        from EUSVoiceLabelLib.slicer.export import export_reviewed

        result = self._results.get(resultsTable.GetID())
        if result is None:
            raise RuntimeError(_("The results of {name} were made in an earlier session: label "
                                 "the procedure again to export them.").format(
                                     name=resultsTable.GetName()))
        # The command line's output rule and one-writer locks for both folders: refused
        # before anything is written when either is an input, a procedure, a cohort or
        # someone else's folder.
        files = export_reviewed(result, self.reviewTable(resultsTable).reviewed_labels(),
                                outputFolder, datasetFolder)
        return {k: str(v) for k, v in files.items()}

    def addToCohort(self, resultsTable, cohortFolder, name: Optional[str] = None):
        """Add the reviewed procedure to a cohort folder (recording, audio, ``mentions.csv``
        with the reviewed labels) so that training from that cohort learns the corrections.
        Returns the new procedure folder."""
        frames = self.outputNodes(resultsTable)["frames"]
        result = self._results.get(resultsTable.GetID())
        mentions = self.reviewTable(resultsTable).training_mentions_of(
            result.windows if result is not None else None)
        return write_training_procedure(self.procedureForSequence(frames), mentions,
                                        cohortFolder, name or frames.GetName())

    # ------------------------------------------------------------------ training
    def startTraining(self, cohortFolder, modelPath, epochs: Optional[int] = None,
                      imageSize: Optional[str] = None, device: str = "auto",
                      logCallback=None, progressCallback=None, finishedCallback=None):
        """Train a model from a cohort folder in a background process
        (``PythonSlicer -m EUSVoiceLabelLib train COHORT --out MODEL ...``); the GUI stays
        responsive.  ``logCallback(line)``, ``progressCallback(fraction, description)`` and
        ``finishedCallback(ok)`` report on it.  Returns the process wrapper (``.cancel()``)."""
        if self._training is not None and self._training.isRunning():
            raise RuntimeError(_("A training run is already in progress."))
        args = train_arguments(cohortFolder, modelPath, epochs=epochs, image_size=imageSize,
                               device=device)
        program = shutil.which("PythonSlicer") or os.path.join(
            slicer.app.slicerHome, "bin", "PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if not os.path.isfile(program):
            raise RuntimeError(_("PythonSlicer was not found next to Slicer: {path}").format(
                path=program))
        if logCallback:
            logCallback(" ".join([program] + args))
        self._training = _TrainingProcess(program, args, logCallback, progressCallback,
                                          finishedCallback)
        return self._training

    def cancelTraining(self) -> None:
        """Stop a running training process (nothing is written: the checkpoint is saved
        atomically at the end)."""
        if self._training is not None:
            self._training.cancel()


#
# EUSVoiceLabelTest
#


class EUSVoiceLabelTest(ScriptedLoadableModuleTest):
    """Self-contained tests on a tiny synthetic procedure and a model trained for a few steps
    on CPU (no download, no speech engine)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

        self.tempDir = pathlib.Path(tempfile.mkdtemp(prefix="EUSVoiceLabelTest"))

    def tearDown(self):
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def runTest(self):
        for test in (self.test_ReviewAndTables, self.test_LabelLoadedProcedure,
                     self.test_LabelSceneSequence, self.test_BackgroundTraining):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    # ---- helpers
    def _tinyModel(self, frames: int = 5):
        """A tiny cohort written with the library and a model trained for 2 epochs on CPU."""
        # deferred: torch
        from EUSVoiceLabelLib.data.dataset import build_window_set
        from EUSVoiceLabelLib.train.config import TrainConfig
        from EUSVoiceLabelLib.train.checkpoints import preprocessing_settings, save_checkpoint
        from EUSVoiceLabelLib.train.loop import train_model

        cohort = self.tempDir / "cohort"
        # p1 is cropped off-centre, as real recordings are (the overlays must follow).
        write_tiny_procedure(cohort / "p1", seed=1, size=(120, 90), crop=(12, 20, 96, 64))
        write_tiny_procedure(cohort / "p2", seed=2, labels=("bile_duct", "pancreas"))
        cfg = TrainConfig(epochs=2, batch_size=4, image_size=(32, 48), frames=frames,
                          width=0.0625, lr=1e-3)
        ws = build_window_set(cohort, settings=cfg.window_settings(), progress=False,
                              cache_dir=self.tempDir / "cache")
        res = train_model(ws, cfg, len(ws.labelset), device="cpu", progress=False)
        model = self.tempDir / "model.pt"
        save_checkpoint(model, res, ws.labelset, preprocessing_settings(ws, cfg))
        return cohort, model

    def _assertOutputs(self, logic, results, frames, nWindows, framesAreCropped=True):
        nodes = logic.outputNodes(results)
        browser = nodes["browser"]
        self.assertEqual(results.GetNumberOfRows(), nWindows)
        self.assertIsNotNone(browser)
        self.assertEqual(browser.GetMasterSequenceNode(), frames)
        for key in ("heatMap", "segmentation", "text", "points"):
            self.assertIsNotNone(nodes[key], key)
            self.assertTrue(browser.IsSynchronizedSequenceNode(nodes[key].GetID()), key)
            # two items per window at most (start, and a blank one where it ends) + the start
            self.assertGreaterEqual(nodes[key].GetNumberOfDataNodes(), nWindows)
            self.assertLessEqual(nodes[key].GetNumberOfDataNodes(), 2 * nWindows + 1)
        seg = nodes["segmentation"].GetNthDataNode(0)
        names = [seg.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(seg.GetSegmentation().GetNumberOfSegments())]
        self.assertEqual(names, [lab.name for lab in logic.labelsetForResults(results).labels])
        # one point per window, each in its window's item only
        pointSeq = nodes["points"]
        counts = [pointSeq.GetNthDataNode(i).GetNumberOfControlPoints()
                  for i in range(pointSeq.GetNumberOfDataNodes())]
        self.assertEqual(sorted(set(counts)), [0, 1] if 0 in counts else [1])
        self.assertEqual(sum(counts), nWindows)
        # a window that needs review has its point selected, drawn in the review colour
        columns = [results.GetColumnName(c) for c in range(results.GetNumberOfColumns())]
        if "needs_review" in columns:
            rows = sorted((float(results.GetCellText(r, columns.index("time_s"))),
                           results.GetCellText(r, columns.index("needs_review")) == "1")
                          for r in range(results.GetNumberOfRows()))
            selected = [pointSeq.GetNthDataNode(i).GetNthControlPointSelected(0)
                        for i in range(pointSeq.GetNumberOfDataNodes())
                        if pointSeq.GetNthDataNode(i).GetNumberOfControlPoints()]
            self.assertEqual(selected, [flagged for _, flagged in rows])
            display = browser.GetProxyNode(pointSeq).GetDisplayNode()
            self.assertEqual([round(c, 3) for c in display.GetSelectedColor()],
                             list(REVIEW_POINT_COLOR))
        if framesAreCropped:  # every overlay lies exactly on the frames
            frameBounds = self._bounds(frames.GetNthDataNode(0))
            for i in range(nodes["heatMap"].GetNumberOfDataNodes()):
                self.assertEqual(self._bounds(nodes["heatMap"].GetNthDataNode(i)), frameBounds)
                for j in range(pointSeq.GetNthDataNode(i).GetNumberOfControlPoints()):
                    r, _, a = pointSeq.GetNthDataNode(i).GetNthControlPointPositionVector(j)
                    self.assertTrue(frameBounds[0] <= r <= frameBounds[1]
                                    and frameBounds[2] <= a <= frameBounds[3], (r, a))
        return nodes

    @staticmethod
    def _bounds(volume) -> list:
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        return [round(b, 3) for b in bounds]

    # ---- tests
    def test_ReviewAndTables(self):
        """Mentions and results tables round-trip through table nodes; review is kept."""
        self.delayDisplay("Tables and review")
        logic = EUSVoiceLabelLogic()
        table = logic.mentionsToTable([Mention(2.0, "bile_duct"), Mention(1.0, "pancreas", 1.5)])
        self.assertEqual(table.GetNumberOfRows(), 2)
        table.SetCellText(0, 1, "PD")  # the user edits a label to a synonym
        mentions = logic.mentionsFromTable(table)
        self.assertEqual([m.label for m in mentions], ["pancreatic_duct", "bile_duct"])
        results = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
        logic.writeTable(results, RESULT_COLUMNS, [
            ["0", "1.000", "2.000", "pancreas", "pancreas", "0.9000", "", "pending"],
            ["1", "3.000", "4.000", "bile_duct", "portal_vein", "0.4000", "", "pending"]])
        logic.sortResults(results, "confidence")
        self.assertEqual(results.GetCellText(0, 0), "1")
        logic.correctWindow(results, 1, "bile_duct")
        logic.acceptWindow(results, 0)
        review = logic.reviewTable(results)
        self.assertEqual(review.reviewed_labels(), {0: "pancreas", 1: "bile_duct"})
        self.assertEqual(review.counts()["corrected"], 1)
        self.delayDisplay("Test passed")

    def test_LabelLoadedProcedure(self):
        """Load a procedure from files, label it, check every output node, review, export."""
        self.delayDisplay("Training a tiny model")
        cohort, model = self._tinyModel()
        logic = EUSVoiceLabelLogic()
        frames = logic.loadProcedure(cohort / "p1")
        self.assertEqual(frames.GetNumberOfDataNodes(), 200)  # 8 s at 25 fps
        self.assertEqual(frames.GetIndexName(), "time")
        self.assertEqual(frames.GetNthIndexValue(25), "1.000")
        self.assertTrue(frames.GetAttribute(ATTR_AUDIO).endswith("audio.wav"))
        matrix = vtk.vtkMatrix4x4()
        frames.GetNthDataNode(0).GetIJKToRASMatrix(matrix)
        self.assertEqual((matrix.GetElement(0, 0), matrix.GetElement(1, 1)), (-1.0, -1.0))
        mentions = logic.mentionsFromFile(frames, cohort / "p1" / "mentions.csv")
        self.assertEqual(mentions.GetNumberOfRows(), 4)

        self.delayDisplay("Detecting mentions")
        heard = []
        detected = logic.detectMentions(frames, progressCallback=lambda d, t: heard.append((d, t)))
        self.assertIsNotNone(detected)
        self.assertEqual(heard[-1], (8, 8))  # seconds of audio listened to, of all
        # Cancelling leaves the mentions table as it was.
        self.assertIsNone(logic.detectMentions(frames, mentions, shouldStop=lambda: True))
        self.assertEqual(mentions.GetNumberOfRows(), 4)

        self.delayDisplay("Labelling")
        calls = []
        results = logic.label(frames, mentions, model, device="cpu",
                              progressCallback=lambda d, t: calls.append((d, t)))
        self.assertEqual(calls[-1], (4, 4))
        nodes = self._assertOutputs(logic, results, frames, 4)

        # Selecting a window moves the browser to it; the outputs follow.
        browser = nodes["browser"]
        item = logic.jumpToWindow(results, 2)
        self.assertEqual(browser.GetSelectedItemNumber(), item)
        row2 = logic.reviewTable(results).row(2)  # rows are in review order, not by time
        time2 = row2.time_s
        self.assertAlmostEqual(float(frames.GetNthIndexValue(item)), time2, delta=0.04)
        text = browser.GetProxyNode(nodes["text"]).GetText()
        label = logic.labelsetForResults(results).get(row2.final_label).name
        self.assertTrue(text.startswith(label), text)
        browser.SetSelectedItemNumber(0)
        self.assertEqual(browser.GetProxyNode(nodes["text"]).GetText(), "")

        # Cancelling keeps the windows done so far.
        stopAfter = iter([False, True])
        partial = logic.label(frames, mentions, model, device="cpu",
                              shouldStop=lambda: next(stopAfter, True))
        self.assertEqual(partial.GetNumberOfRows(), 1)
        self.assertEqual(partial.GetAttribute(ATTR_PREFIX + "Cancelled"), "true")

        self.delayDisplay("Review and export")
        logic.correctWindow(results, 1, "portal_vein")
        files = logic.exportResults(results, self.tempDir / "out", self.tempDir / "dataset")
        self.assertIn("landmarks.mrk.json", files)
        self.assertIn("portal_vein", (self.tempDir / "out" / "labels.csv").read_text())
        self.assertTrue(any((self.tempDir / "dataset" / "images" / "portal_vein").iterdir()))
        dest = logic.addToCohort(results, self.tempDir / "reviewed")
        self.assertIn("portal_vein", (dest / "mentions.csv").read_text())
        self.delayDisplay("Test passed")

    def test_LabelSceneSequence(self):
        """Label a volume sequence that is already in the scene (e.g. a DICOM cine loop) with
        an audio file attached to it."""
        cohort, model = self._tinyModel()
        source = load_procedure(cohort / "p1")
        seq = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
        seq.SetIndexName("time")
        seq.SetIndexUnit("s")
        # 12.5 fps RGB frames with a border that the crop removes
        rgb = np.zeros((1, 64 + 20, 96 + 30, 3), np.uint8)
        temp = slicer.util.addVolumeFromArray(rgb, ijkToRAS=np.diag([-1.0, -1.0, 1.0, 1.0]),
                                              nodeClassName="vtkMRMLVectorVolumeNode")
        allFrames = source.frames(0, source.n_frames)
        for i in range(0, len(allFrames), 2):
            rgb[0, 10:74, 15:111, :] = allFrames[i][..., None]
            slicer.util.updateVolumeFromArray(temp, rgb)
            seq.SetDataNodeAtValue(temp, f"{i / 25:.3f}")
        slicer.mrmlScene.RemoveNode(temp)
        logic = EUSVoiceLabelLogic()
        logic.setSequenceAudio(seq, source.audio_path, 0.0, crop=[15, 10, 96, 64])
        self.assertEqual(seq.GetAttribute(ATTR_AUDIO), str(source.audio_path))
        mentions = logic.mentionsToTable(source.mentions, seq)
        results = logic.label(seq, mentions, model, device="cpu")
        nodes = self._assertOutputs(logic, results, seq, 4, framesAreCropped=False)
        heat = nodes["heatMap"].GetNthDataNode(1)
        self.assertEqual(heat.GetImageData().GetDimensions()[:2], (96, 64))
        # the heat map lies on the cropped region of the frames
        matrix = vtk.vtkMatrix4x4()
        heat.GetIJKToRASMatrix(matrix)
        self.assertEqual((matrix.GetElement(0, 3), matrix.GetElement(1, 3)), (-15.0, -10.0))
        self.delayDisplay("Test passed")

    def test_BackgroundTraining(self):
        """'Train from cohort folder' runs as a background process and writes the model."""
        cohort = self.tempDir / "cohort"
        write_tiny_procedure(cohort / "p1", seed=1)
        write_tiny_procedure(cohort / "p2", seed=2, labels=("bile_duct", "pancreas"))
        logic = EUSVoiceLabelLogic()
        log, done = [], []
        out = self.tempDir / "model.pt"
        logic.startTraining(cohort, out, epochs=1, imageSize="32x48", device="cpu",
                            logCallback=log.append, finishedCallback=done.append)
        deadline = time.time() + 600
        while not done and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(done, [True], "\n".join(log))
        self.assertTrue(out.is_file())
        self.delayDisplay("Test passed")
