"""The tourism group's job: its visitors into PSI, the split plan, its feature blocks.

Tourism is the coordinator: it owns the visit history, so it fixes the temporal split and
publishes it (dates only) for the other parties. Only visitors who consented to marketing
and partner matching enter PSI; their visits get the canonical user token the carrier
hub assigns. After its blocks are written it tells the carrier which user tokens have
tourism history in the training window (for `carrier/users.is_prospect`).
"""
from __future__ import annotations

import json
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import functions as F

from wenlv.features import contracts as C
from wenlv.spark_jobs import weights
from wenlv.spark_jobs.party import PLAN_FILE, Party
from wenlv.errors import WenlvError

TEST_DAYS = 28  # default test window: the last 28 days of visits (the generator's Timeline does the same)
DAY_ENDS_HOUR = 4  # a tourism day runs 04:00-04:00: an after-midnight bar visit belongs to the evening before
SUMMER_MONTHS = (6, 7, 8)


class TourismJob(Party):
    def __init__(self, spark, data_dir, out_dir, quarantine=False):
        super().__init__(spark, "tourism", data_dir, out_dir, quarantine)

    def consenting_visitors(self):
        return self.read_raw(C.VISITORS).filter(F.col("consent_marketing"))

    def psi_phones(self):
        return self.consenting_visitors().select("phone")

    def publish_plan(self, split_date: date | None = None) -> dict:
        """Fix the split: default = last visit date − 27 days, so the test window is the last 28 days."""
        day = F.to_date(tourism_day("arrived_at"))
        span = self.read_raw(C.VISITS).agg(F.min(day).alias("first"), F.max(day).alias("last")).first()
        if span["first"] is None:
            raise WenlvError(f"{self.raw_dir}/visits has no rows: cannot fix a train/test split")
        first, last = span["first"], span["last"]
        split = split_date or last - timedelta(days=TEST_DAYS - 1)
        if not first < split <= last:
            raise WenlvError(f"split date {split} is outside the visits ({first} .. {last}): "
                             "the training window would be empty or the test window beyond the data")
        plan = {"split_date": split.isoformat(),
                "train_window": [first.isoformat(), (split - timedelta(days=1)).isoformat()],
                "test_window": [split.isoformat(), last.isoformat()]}
        self.exchange.mkdir(parents=True, exist_ok=True)
        (self.exchange / PLAN_FILE).write_text(json.dumps(plan))
        return plan

    def visitor_tokens(self, matched):
        """DataFrame[visitor_id, token]: consenting visitors the carrier matched, canonical tokens."""
        return self.aligned_tokens(self.consenting_visitors(), "visitor_id", matched)

    def build_blocks(self, matched) -> dict:
        plan = self.read_plan()
        split = F.to_date(F.lit(plan["split_date"]))
        window_end = F.to_timestamp(F.lit(plan["split_date"])) + F.expr(f"INTERVAL {DAY_ENDS_HOUR} HOURS")
        tokens = self.visitor_tokens(matched).persist(StorageLevel.MEMORY_AND_DISK)
        visits = self.read_raw(C.VISITS).withColumn(
            "dwell", (F.unix_timestamp("departed_at") - F.unix_timestamp("arrived_at")) / 60.0)
        in_test = F.to_date(tourism_day("arrived_at")) >= split
        train, test = visits.filter(~in_test), visits.filter(in_test)

        agg = (train.join(tokens, "visitor_id").groupBy("token", "poi_id")
               .agg(F.count(F.lit(1)).alias("visits"), F.sum("spend_cny").alias("spend_cny"),
                    F.sum("dwell").alias("dwell_minutes"), F.max("arrived_at").alias("last_at"))
               .withColumn("recency_days", (F.unix_timestamp(window_end) - F.unix_timestamp("last_at")) / 86400.0))
        interactions = agg.withColumn("confidence", weights.tourism_confidence(
            F.col("visits"), F.col("spend_cny"), F.col("dwell_minutes"), F.col("recency_days")))
        held_out = test.join(tokens, "visitor_id").groupBy("token", "poi_id").agg(F.count(F.lit(1)).alias("visits"))

        month, dow = F.month("arrived_at"), F.dayofweek("arrived_at")  # Spark: 1 = Sunday, 7 = Saturday
        poi_stats = train.groupBy("poi_id").agg(
            F.countDistinct("visitor_id").cast("double").alias("popularity"),
            F.avg(month.isin(*SUMMER_MONTHS).cast("double")).alias("summer_share"),
            F.avg(dow.isin(1, 7).cast("double")).alias("weekend_share"))
        poi_features = self.read_raw(C.POIS).select("poi_id", "category").join(poi_stats, "poi_id", "left").fillna(
            0.0, subset=["popularity", "summer_share", "weekend_share"])

        entries = {
            "tourism/interactions": self.write_block(C.TOURISM_INTERACTIONS, interactions),
            "tourism/test_interactions": self.write_block(C.TOURISM_TEST, held_out),
            "tourism/poi_features": self.write_block(C.POI_FEATURES, poi_features),
        }
        # Message to the carrier: which user tokens have tourism history before the split.
        history = self.spark.read.parquet(str(self.block_dir / "interactions.parquet")).select("token").distinct()
        history.write.mode("overwrite").parquet(str(self.message_path("tourism_history")))
        self.tokenised_visitors = tokens.count()
        tokens.unpersist()
        return entries


def tourism_day(column: str):
    """The timestamp shifted back by DAY_ENDS_HOUR hours: its date is the tourism day."""
    return F.col(column) - F.expr(f"INTERVAL {DAY_ENDS_HOUR} HOURS")
