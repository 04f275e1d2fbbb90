"""The numbers of Bonmati et al. (IEEE TMI 2021) that the code follows, written once.

Every other module reads them from here: the video and window geometry, the audio and
spectrogram sizes, the training batch, the bootstrap and the cohort of the published results.
The per-variant numbers (Table II epochs and learning rates, Table III results) belong to each
variant and live in its row of :data:`.variants.VARIANT_SPECS`.  Standard library only.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- video and windows
#: Frame rate of the recordings and of the frame grid every window is cut from (frames / s).
FPS = 25.0
#: Length of a sample window (s): the speech where the landmark is named and the frames shown.
WINDOW_S = 1.0
#: Frames per window: one second at :data:`FPS`.
WINDOW_FRAMES = 25
#: (W, H) of the paper's recorded video.
VIDEO_SIZE = (720, 480)
#: (W, H) of the paper's crop, which drops the burnt-in text around the image.
CROP_SIZE = (690, 350)
#: (H, W) of the network input: the crop, not resized.
IMAGE_SIZE = (CROP_SIZE[1], CROP_SIZE[0])

# --------------------------------------------------------------------------- audio
#: Sample rate the spectrogram is computed at (Hz); other rates are resampled to it.
SAMPLE_RATE = 48_000
#: TensorFlow-style STFT framing: ``tf.signal.stft(frame_length=1200, frame_step=720,
#: fft_length=2046)``.
FRAME_LENGTH = 1200
FRAME_STEP = 720
FFT_LENGTH = 2046
#: Spectrogram of one window: 2046 / 2 + 1 = 1024 frequency bins x 1 + (48000 - 1200) // 720
#: = 66 frames.
N_BINS = FFT_LENGTH // 2 + 1
N_FRAMES = 1 + (int(SAMPLE_RATE * WINDOW_S) - FRAME_LENGTH) // FRAME_STEP
SPECTROGRAM_SHAPE = (N_BINS, N_FRAMES)

# --------------------------------------------------------------------------- network, training
#: R: channels of both branch outputs (the image branch's last block is widened to it).
R_CHANNELS = 1024
#: Batch size of every training run in the paper (Table II).
BATCH_SIZE = 8
#: Frames the ``reduced_input`` variant keeps of each window.
REDUCED_FRAMES = 3

# --------------------------------------------------------------------------- evaluation
#: Bootstrap of the pooled LOPO predictions: random subsets of patients, their accuracy.
BOOTSTRAP_SUBSETS = 100
BOOTSTRAP_SUBSET_SIZE = 10
#: The published cohort: patients and spoken mentions (windows).
PATIENTS = 12
WINDOWS = 143
#: Bootstrap accuracy of the proposed model: (mean, std).
BOOTSTRAP_PROPOSED = (0.76, 0.04)

#: Table I: mentions per label in patients 1..12 (143 in all).
TABLE_I: dict[str, tuple[int, ...]] = {
    "pancreas": (0, 0, 0, 1, 1, 0, 0, 5, 4, 2, 2, 1),
    "portal_vein": (0, 1, 1, 1, 1, 0, 0, 8, 5, 0, 6, 1),
    "pancreatic_duct": (1, 11, 0, 2, 5, 4, 0, 5, 2, 3, 2, 3),
    "portal_venous_confluence": (0, 2, 1, 1, 3, 1, 0, 7, 8, 0, 1, 0),
    "bile_duct": (1, 4, 2, 3, 8, 2, 1, 2, 10, 3, 5, 0),
}
