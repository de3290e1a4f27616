"""Build a Megatron-Core ``GPTModel`` configured as Llama.

The layer spec is Transformer Engine's when TE and CUDA are present (the production path: fused
norm+linear, fp8/bf16 kernels), Megatron-Core's local spec otherwise; ``spec`` picks one explicitly.
Both save the same checkpoint keys (the local spec maps its norms onto TE's names), so checkpoints
move freely between them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from motif_megatron import device
from motif_megatron.compat import cpu
from motif_megatron.compat.specs import submodules
from motif_megatron.errors import UserError
from motif_megatron.model import lora, masked
from motif_megatron.model.llama import LlamaArgs, llama3_inv_freq, padded_vocab_size

SpecName = Literal["auto", "te", "local"]


@dataclass(frozen=True)
class BuildOptions:
    """How to instantiate (not what to instantiate: that is ``LlamaArgs``)."""

    tp: int = 1
    pp: int = 1
    vpp: int = 1
    """Model chunks per pipeline rank (``--num-layers-per-virtual-pipeline-stage``)."""
    spec: SpecName = "auto"
    params_dtype: torch.dtype | None = None
    """Parameter dtype; None keeps the checkpoint's native dtype."""
    make_vocab_size_divisible_by: int = 128
    sequence_parallel: bool = False
    init_std: float | None = None
    """Weight init std for fresh models; None uses the config's ``initializer_range``."""
    initialize: bool = True
    """False leaves weights as untouched ``torch.empty`` placeholders (for streaming writers)."""
    host_only: bool = False
    """Build in host memory on the local spec (conversion and growth tools: no GPU memory is
    taken even on a GPU node); otherwise the model lives on this rank's device."""
    recompute_granularity: Literal["full", "selective"] | None = None
    """Activation recomputation (Megatron-LM's ``--recompute-granularity``)."""
    recompute_method: Literal["uniform", "block"] | None = None
    recompute_num_layers: int | None = None
    lora: object | None = None
    """A ``model.lora.LoRAConfig``: its target linears are built as LoRA modules of the spec."""
    attention_backend: str = "auto"
    """Megatron-LM's ``--attention-backend``; on the local spec ``flash``/``auto`` is torch's
    scaled_dot_product_attention (:mod:`attention`), ``unfused``/``local`` Megatron-Core's."""
    rope_fusion: bool = False
    bias_swiglu_fusion: bool = False
    masked_softmax_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    cross_entropy_loss_fusion: bool = False
    cross_entropy_fusion_impl: str = "native"
    """The trainer's fusion flags (Megatron-LM's; off for the tools). Those needing Transformer
    Engine's kernels apply on the TE spec only, and none on a CPU (:func:`fusions`)."""


def fusions(options: BuildOptions, te: bool) -> dict[str, object]:
    """The ``TransformerConfig`` fusion fields these options give on this machine: RoPE, softmax
    and weight-gradient fusion are Transformer Engine kernels (Megatron-LM also turns the last
    off without TE or apex); SwiGLU and cross entropy are Megatron-Core's own (CUDA)."""
    if cpu.needed():
        return {}  # compat.cpu's overrides turn every fusion off
    return {
        "apply_rope_fusion": options.rope_fusion and te,
        "bias_activation_fusion": options.bias_swiglu_fusion,
        "masked_softmax_fusion": options.masked_softmax_fusion and te,
        "gradient_accumulation_fusion": options.gradient_accumulation_fusion and te,
        "cross_entropy_loss_fusion": options.cross_entropy_loss_fusion,
        "cross_entropy_fusion_impl": options.cross_entropy_fusion_impl,
    }


def te_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def resolve_spec(spec: SpecName) -> Literal["te", "local"]:
    """``auto``: Transformer Engine where it can run, else local; plain and masked models alike."""
    if spec == "auto":
        return "te" if te_available() else "local"
    if spec == "te" and not te_available():
        raise UserError("--spec te needs CUDA and transformer-engine (pip install .[gpu])")
    return spec


def uses_te(model: torch.nn.Module) -> bool:
    """True when the model's layers come from Transformer Engine's spec (packed rows go THD)."""
    return any(
        type(m).__module__.startswith("megatron.core.extensions.transformer_engine")
        for m in model.modules()
    )


def check_parallel_shapes(args: LlamaArgs, tp: int, pp: int, vpp: int = 1) -> None:
    """Refuse a TP/PP split the model cannot take, with one line naming the numbers."""
    problems = []
    if args.num_attention_heads % tp:
        problems.append(
            f"num_attention_heads={args.num_attention_heads} is not divisible by tp={tp}"
        )
    if args.num_key_value_heads % tp:
        problems.append(
            f"num_key_value_heads={args.num_key_value_heads} is not divisible by tp={tp}"
        )
    if args.intermediate_size % tp:
        problems.append(f"intermediate_size={args.intermediate_size} is not divisible by tp={tp}")
    if args.num_hidden_layers % (pp * vpp):
        split = f"pp={pp}" if vpp == 1 else f"pp*vpp={pp}*{vpp}"
        problems.append(f"num_hidden_layers={args.num_hidden_layers} is not divisible by {split}")
    if problems:
        raise UserError("; ".join(problems))


def transformer_config(args: LlamaArgs, options: BuildOptions):
    """The Megatron-Core ``TransformerConfig`` for a Llama with these args."""
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnBackend

    check_parallel_shapes(args, options.tp, options.pp, options.vpp)
    if options.sequence_parallel and not te_available():
        raise UserError(
            "sequence parallel needs Transformer Engine or apex norms, which need CUDA; "
            "drop --sequence-parallel on CPU"
        )
    dtype = options.params_dtype or args.torch_dtype
    te = not options.host_only and resolve_spec(options.spec) == "te"
    overrides = dict(cpu.CPU_CONFIG_OVERRIDES) if cpu.needed() else fusions(options, te)
    if options.host_only:
        overrides["use_cpu_initialization"] = True
    return TransformerConfig(
        num_layers=args.num_hidden_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.intermediate_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_key_value_heads,
        kv_channels=args.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=args.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=options.init_std or args.initializer_range,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=options.tp,
        pipeline_model_parallel_size=options.pp,
        virtual_pipeline_model_parallel_size=options.vpp if options.vpp > 1 else None,
        # Megatron-LM's interleaved defaults: unbatched p2p overlapped with compute (batched,
        # a PP=2 pipeline would pair one rank's activation send with the other's gradient
        # receive)
        overlap_p2p_comm=options.vpp > 1,
        batch_p2p_comm=options.vpp == 1,
        sequence_parallel=options.sequence_parallel,
        perform_initialization=options.initialize,
        # every loss function here returns (sum, count): gradients are those of the global
        # batch's per-token mean, whatever the microbatching (Megatron-LM's
        # --calculate-per-token-loss)
        calculate_per_token_loss=True,
        recompute_granularity=options.recompute_granularity,
        recompute_method=options.recompute_method,
        recompute_num_layers=options.recompute_num_layers,
        # TE takes the backend from the config (process-wide NVTE_* variables); the local spec
        # from its core-attention module (layer_spec)
        attention_backend=AttnBackend[options.attention_backend if te else "auto"],
        **overrides,
    )


def model_vocab_size(args: LlamaArgs, options: BuildOptions) -> int:
    """The checkpoint's padded vocabulary when this TP divides it, else Megatron-LM's padding."""
    if args.padded_vocab_size and args.padded_vocab_size % options.tp == 0:
        return args.padded_vocab_size
    return padded_vocab_size(args.vocab_size, options.make_vocab_size_divisible_by, options.tp)


def layer_spec(spec: Literal["te", "local"], attention_backend: str = "auto"):
    """Megatron-Core's layer spec; the local one with the core attention ``attention_backend``
    names (TE reads the backend from the config)."""
    from megatron.core.models.gpt import gpt_layer_specs

    from motif_megatron.model.attention import core_attention

    if spec == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    layer = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    submodules(layer.submodules.self_attention).core_attention = core_attention(attention_backend)
    return layer


def build_chunks(args: LlamaArgs, options: BuildOptions) -> list:
    """This pipeline rank's model chunks: one, or ``options.vpp`` for the interleaved schedule
    (chunk ``i`` holds virtual stage ``i``, as Megatron-LM's ``get_model`` builds them)."""
    if options.vpp == 1:
        return [build_model(args, options)]
    return [build_model(args, options, vp_stage=i) for i in range(options.vpp)]


def build_model(args: LlamaArgs, options: BuildOptions, vp_stage: int | None = None):
    """One ``GPTModel`` chunk for this process's pipeline stage (model-parallel state must exist);
    ``vp_stage`` picks the virtual stage when the model is split into chunks."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(args, options)
    impl = "local" if options.host_only else resolve_spec(options.spec)
    msg = args.growth.get("msg")
    if msg:  # a width-grown model trains with MSG masks until it is finalized
        from megatron.core.transformer.transformer_block import get_num_layers_to_build

        if options.lora is not None:
            raise UserError("LoRA on an MSG-masked model: finalize the width growth first")
        layers = get_num_layers_to_build(config, vp_stage=vp_stage)
        spec = masked.masked_spec(layer_spec(impl, options.attention_backend), config, msg, layers)
    else:
        spec = layer_spec(impl, options.attention_backend)
    if options.lora is not None:
        spec = lora.lora_spec(spec, options.lora)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=model_vocab_size(args, options),
        max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=args.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(args.rope_theta),
        vp_stage=vp_stage,
    )
    # Megatron-Core fixes the Llama-3 scaling constants and truncates rope_theta to int; set the
    # inverse frequencies HF computes so any config is exact.
    rotary = model.rotary_pos_emb
    rotary.inv_freq = llama3_inv_freq(args).to(rotary.inv_freq.device)
    if msg:
        masked.attach_embedding_mask(model, msg["old_hidden"])
        masked.set_mask(model, msg.get("m", 0.0))
    if options.lora is not None:
        lora.init_adapters(model, options.lora)
    # like Megatron-LM's Float16Module: norms too live in the model dtype (a no-op for the
    # linear weights, which are created in it, so placeholders stay untouched); MSG masks
    # stay fp32
    model = model.to(config.params_dtype)
    return model if options.host_only else device.module_to_device(model)
