"""Each request kind of the lm-eval ``motif`` model once (``lm_eval_requests.py CHECKPOINT``): the
device audit runs it over the adapter's three methods."""

import sys

from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from motif_megatron.eval.lm_eval_model import register


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


if __name__ == "__main__":
    register()
    model = get_model("motif")(load=sys.argv[1], max_length=64)
    print(model.loglikelihood(requests("loglikelihood", [("서울은 한국의", " 수도입니다.")])))
    text = [("한국어 문장과 English words, together. " * 6,)]
    print(model.loglikelihood_rolling(requests("loglikelihood_rolling", text)))
    until = {"until": ["\n"], "max_gen_toks": 4, "do_sample": False}
    print(model.generate_until(requests("generate_until", [("Hello", until)])))
