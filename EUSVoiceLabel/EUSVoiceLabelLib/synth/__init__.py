"""Synthetic EUS video + spoken commentary cohorts (``eusvoicelabel synth``).

- :func:`synth_cohort` writes a cohort in the layout of docs/contracts.md (video, audio, mentions, procedure
  settings and a ``truth.json`` per patient that the pipeline never reads).
- :func:`count_plan` gives the per-patient, per-label mention counts (``"paper"`` = Table I).
- :func:`speak`, :func:`speak_words`, :func:`speak_phrase`, :func:`list_speakers`: the
  synthetic speakers, reusable for keyword-model pretraining and detector tests.
"""

from __future__ import annotations

from .cohort import (DISTRACTORS, SYNONYMS, TABLE_I, CohortPlan, count_plan, make_patient,
                     synth_cohort, write_cohort)
from .speech import (Speaker, SpokenPhrase, get_speaker, list_speakers, speak, speak_phrase,
                     speak_words)

__all__ = ["synth_cohort", "write_cohort", "CohortPlan", "count_plan", "make_patient", "TABLE_I", "SYNONYMS", "DISTRACTORS",
           "Speaker", "SpokenPhrase", "list_speakers", "get_speaker", "speak", "speak_phrase",
           "speak_words"]
