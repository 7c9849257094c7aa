"""Serving's POI filters: defined in `training.poi_filters`.

The code moved down to training so that the MLflow pyfunc model (`training.pyfunc_model`)
applies exactly the filters serving applies; this module keeps serving's names for them.
"""
from wenlv.training.poi_filters import LOCAL_TZ, Filters, PoiTable, now_minute

__all__ = ["LOCAL_TZ", "Filters", "PoiTable", "now_minute"]
