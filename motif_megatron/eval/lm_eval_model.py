"""lm-eval model ``motif``: a Megatron checkpoint (single process, or TP/PP under torchrun).

``register()`` adds the name lazily (``module:Class``), so importing lm-eval loads no Megatron:

    from motif_megatron.eval.lm_eval_model import register; register()
    lm_eval.simple_evaluate(model="motif", model_args="load=ckpt/final,tp=1", tasks=[...])

A Korean-expanded vocabulary merges tokens across the context/continuation boundary, so lm-eval's
causal default (encode the whole string, then cut at the context's length) can hand the
continuation a token that also spans context text. Here the context and the continuation are
encoded separately: the scored tokens are exactly the continuation's.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import TemplateLM

NAME = "motif"


def register() -> None:
    """Make ``model="motif"`` known to lm-eval (idempotent). lm-eval fills its built-in names
    only into an empty registry, so they are registered first: ``hf`` stays available."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if NAME not in model_registry:
        model_registry.register(NAME, target=f"{__name__}:MotifLM")


class MotifLM(TemplateLM):
    def __init__(
        self,
        load: str,
        tp: int = 1,
        pp: int = 1,
        max_length: int = 1024,
        max_gen_toks: int = 64,
        **_,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from motif_megatron import parallel
        from motif_megatron.checkpoint import dist as ckpt
        from motif_megatron.checkpoint.dist import build_from_checkpoint
        from motif_megatron.model.builder import BuildOptions

        parallel.initialize(parallel.ParallelConfig(int(tp), int(pp)))
        self.model, args = build_from_checkpoint(
            load, BuildOptions(tp=int(tp), pp=int(pp), params_dtype=torch.float32)
        )
        self.model.eval()
        self.vocab_size = args.vocab_size  # forward_logits drops the padded columns
        self.tokenizer = AutoTokenizer.from_pretrained(str(ckpt.root_of(load) / "tokenizer"))
        self.max_length, self.max_gen_toks = int(max_length), int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        """The tokenizer's own default (BOS for Llama) unless told, as lm-eval's ``hf`` does."""
        special = True if add_special_tokens is None else add_special_tokens
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and string.startswith(bos):
            special = False
        return self.tokenizer(string, add_special_tokens=special)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, clean_up_tokenization_spaces=False)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        return self.tok_encode(context), self.tok_encode(continuation, add_special_tokens=False)

    def _logits(self, ids: list[int], last: int) -> torch.Tensor:
        """``[last, vocab]`` next-token logits for the last ``last`` inputs of ``ids`` (the same
        on every rank)."""
        from motif_megatron.model.inference import forward_logits

        return forward_logits(self.model, torch.tensor([ids]), self.vocab_size)[0, -last:]

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        ids = (context + continuation)[-(self.max_length + 1) :]
        logits = self._logits(ids[:-1], len(continuation))
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        target = torch.tensor(continuation, device=logprobs.device)
        picked = logprobs.gather(1, target[:, None]).squeeze(1)
        return float(picked.sum()), bool((logprobs.argmax(-1) == target).all())

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_):
        return [self._score(context, continuation) for _, context, continuation in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of ``max_length`` predictions."""
        out = []
        for (text,) in (r.args for r in requests):
            ids = [self.prefix_token_id, *self.tok_encode(text, add_special_tokens=False)]
            total = 0.0
            for start in range(1, len(ids), self.max_length):
                end = min(start + self.max_length, len(ids))
                context = ids[max(0, end - self.max_length - 1) : start]
                total += self._score(context, ids[start:end])[0]
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, EOS or ``max_gen_toks``."""
        out = []
        for context, kwargs in (r.args for r in requests):
            until = kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            limit = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)[-self.max_length :]
            new: list[int] = []
            text = ""
            for _ in range(limit):
                token = int(self._logits([*ids, *new], 1)[0].argmax())
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out
