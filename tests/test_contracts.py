import pandas as pd
import pyarrow as pa
import pytest

from wenlv.features import contracts


def test_every_table_maps_to_arrow_and_documents_every_column():
    for t in contracts.ALL_TABLES:
        schema = t.arrow_schema()
        assert schema.names == t.columns
        doc = t.markdown()
        for f in t.fields:
            assert f"| {f.name} |" in doc


def test_personal_columns_are_exactly_the_phone_columns():
    assert contracts.personal_columns() == {"phone"}


def test_unknown_table_names_the_known_ones():
    with pytest.raises(KeyError, match="tourism.pois"):
        contracts.table("tourism.poi")


def test_arrow_round_trip_keeps_types():
    t = contracts.POIS
    df = pd.DataFrame([{
        "poi_id": "P1", "name": "West Lake", "category": "scenic_area", "city": "Hangzhou", "lat": 30.25,
        "lon": 120.15, "open_time": "08:00", "close_time": "17:30", "visit_minutes": 120, "price_cny": 0.0,
        "tags": "lake;park",
    }])
    tbl = pa.Table.from_pandas(df, schema=t.arrow_schema(), preserve_index=False)
    assert tbl.schema.equals(t.arrow_schema())
    assert tbl.to_pandas().iloc[0]["visit_minutes"] == 120
