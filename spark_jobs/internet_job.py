"""The internet platform's job: consenting accounts into PSI, then its topic blocks."""
from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import functions as F

from wenlv.features import contracts as C
from wenlv.spark_jobs import weights
from wenlv.spark_jobs.party import Party

# The platform's topics about going out and travelling (its own taxonomy; the share of a
# user's events on them is `travel_share`). Everything else counts as everyday browsing.
TRAVEL_TOPICS = (
    "travel_guides", "train_tickets", "hotel_deals", "scenery", "hiking", "museum", "history",
    "theme_park", "nightlife", "food", "shopping", "family", "music",
)


class InternetJob(Party):
    def __init__(self, spark, data_dir, out_dir, quarantine=False):
        super().__init__(spark, "internet", data_dir, out_dir, quarantine)

    def consenting_accounts(self):
        return self.read_raw(C.ACCOUNTS).filter(F.col("consent_ads"))

    def psi_phones(self):
        return self.consenting_accounts().select("phone")

    def account_tokens(self, matched):
        """DataFrame[account_id, token]: consenting accounts the carrier matched, canonical tokens."""
        return self.aligned_tokens(self.consenting_accounts(), "account_id", matched)

    def build_blocks(self, matched) -> dict:
        plan = self.read_plan()
        tokens = self.account_tokens(matched).persist(StorageLevel.MEMORY_AND_DISK)
        engagement = (self.read_raw(C.ENGAGEMENT).filter(F.col("date") < F.to_date(F.lit(plan["split_date"])))
                      .join(tokens, "account_id"))
        interactions = (engagement.groupBy("token", "topic").agg(F.sum("events").alias("events"))
                        .withColumn("confidence", weights.internet_confidence(F.col("events"))))
        travel = F.when(F.col("topic").isin(*TRAVEL_TOPICS), F.col("events")).otherwise(0)
        per_user = engagement.groupBy("token").agg(
            F.countDistinct("date").cast("double").alias("active_days"),
            F.sum("events").cast("double").alias("total_events"),
            (F.sum(travel) / F.sum("events")).alias("travel_share"))
        side = tokens.select("token").distinct().join(per_user, "token", "left").fillna(
            0.0, subset=["active_days", "total_events", "travel_share"])
        entries = {
            "internet/interactions": self.write_block(C.INTERNET_INTERACTIONS, interactions),
            "internet/user_features": self.write_block(C.INTERNET_USER_FEATURES, side),
        }
        self.tokenised_accounts = tokens.count()
        tokens.unpersist()
        return entries
