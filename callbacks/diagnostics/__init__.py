"""Callbacks that measure a run and draw it, on a cadence, standing aside in one line where a task or net lacks what
they read (`base`). The maths of the digit-circuit analysis is `circuit_math`."""
