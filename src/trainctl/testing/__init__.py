"""Fault injection for trainctl's own tests and for users who want to rehearse failures: real signals, real
exceptions, real hangs, delivered from inside a real job through the ordinary `callbacks:` spec section."""
