"""What differs between training methods, decided in one place.

The program, the memory preflight, the library configs and the auto learning rate read these
flags; none of them compares method names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    # trains a LoRA adapter on a frozen base; False: every weight is trained (full fine-tuning)
    lora: bool
    # the frozen base is loaded in 4-bit NF4 (QLoRA)
    quantized: bool
    # the auto learning rate is divided by this: full fine-tuning moves every weight
    learning_rate_divisor: float
    # the run folder's subfolder that receives the result
    output_dir: str


QLORA = Method("qlora", lora=True, quantized=True, learning_rate_divisor=1, output_dir="adapter")
LORA = Method("lora", lora=True, quantized=False, learning_rate_divisor=1, output_dir="adapter")
FULL = Method("full", lora=False, quantized=False, learning_rate_divisor=10, output_dir="model")
BY_NAME = {method.name: method for method in (QLORA, LORA, FULL)}


def method_named(name: str) -> Method:
    """The method called ``name`` (TrainConfig has already refused unknown names)."""
    return BY_NAME[name]


__all__ = ["BY_NAME", "FULL", "LORA", "QLORA", "Method", "method_named"]
