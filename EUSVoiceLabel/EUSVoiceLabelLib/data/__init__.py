"""Reading procedures and making samples: the audio spectrogram, video and audio decoding,
procedure folders, mentions, the label vocabulary, the cached sample windows and the exported
dataset."""
