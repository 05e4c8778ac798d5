"""Kept for old imports: the model record lives in `jaxrnn.checkpoint.model_record`."""

from jaxrnn.checkpoint.model_record import CHECKED, jsonable, model_difference, model_spec

__all__ = ["CHECKED", "jsonable", "model_difference", "model_spec"]
