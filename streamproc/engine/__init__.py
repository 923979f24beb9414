"""The stream engine: the case processor (plain code) and the faust app around it."""
