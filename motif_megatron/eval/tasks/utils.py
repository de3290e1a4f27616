"""Prompt helpers for the local task YAMLs: lm-eval's own (pinned 0.4.13), so the local tasks
score exactly as the hub tasks they mirror; only the data source differs."""

from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs
from lm_eval.tasks.kobest.utils import (
    copa_doc_to_choice,
    copa_doc_to_target,
    copa_doc_to_text,
    macro_f1_score,
    sentineg_doc_to_text,
    wic_doc_to_text,
)
from lm_eval.tasks.kobest.utils import (
    hellaswag_process_doc as kobest_hellaswag_process_docs,
)
from lm_eval.tasks.kormedmcqa.utils import ExtractChoiceFilter

__all__ = [
    "ExtractChoiceFilter",
    "copa_doc_to_choice",
    "copa_doc_to_target",
    "copa_doc_to_text",
    "hellaswag_process_docs",
    "kobest_hellaswag_process_docs",
    "macro_f1_score",
    "sentineg_doc_to_text",
    "wic_doc_to_text",
]
