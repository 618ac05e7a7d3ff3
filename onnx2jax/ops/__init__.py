"""Operator implementations, one module per topic; importing this package registers them all."""

from . import (  # noqa: F401
    activation,
    attention,
    control_flow,
    conv,
    elementwise,
    linalg,
    llm,
    loss,
    normalization,
    pool,
    quant,
    random,
    reduce,
    sequence,
    shape,
    signal,
    tensor,
    text,
    training,
)
