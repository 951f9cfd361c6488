"""AdapterHub's ``adapters.composition``: the composition blocks and the parser of setups."""

from peftcore.composition import (
    Average,
    BatchSplit,
    Block,
    Fuse,
    MultiTask,
    Parallel,
    Split,
    Stack,
    parse_setup,
    validate,
)

AdapterCompositionBlock = Block
parse_composition = parse_setup
validate_composition = validate

__all__ = ["AdapterCompositionBlock", "Average", "BatchSplit", "Fuse", "MultiTask", "Parallel", "Split", "Stack",
           "parse_composition", "validate_composition"]
