"""The carrier's job: the PSI hub. Opens both sessions, assigns canonical user tokens, writes
the user universe and its own blocks.

PSI inputs: in the tourism session every subscriber (the tourism side enters only visitors
who consented to partner matching, so a match is driven by that consent); in the internet
session only subscribers who consented to partner sharing. Users = consenting subscribers
plus tourism-matched ones. Carrier features (presence, side features) are released only
for subscribers who consented to partner sharing.
"""
from __future__ import annotations

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import functions as F

from wenlv.features import contracts as C
from wenlv.features import world  # public gazetteer: home city coordinates, the destination
from wenlv.privacy import psi_align
from wenlv.spark_jobs import psi_exchange, weights
from wenlv.spark_jobs.party import Party, normalised_phone

TOURISM_SESSION = "tourism-carrier"
INTERNET_SESSION = "internet-carrier"


class CarrierJob(Party):
    def __init__(self, spark, data_dir, out_dir, quarantine=False):
        super().__init__(spark, "carrier", data_dir, out_dir, quarantine)
        self.users = None

    def open_sessions(self) -> None:
        psi_exchange.open_session(self.exchange, TOURISM_SESSION, ("tourism", "carrier"))
        psi_exchange.open_session(self.exchange, INTERNET_SESSION, ("internet", "carrier"))

    def _subscribers(self):
        return self.read_raw(C.SUBSCRIBERS).withColumn("phone", normalised_phone("phone"))

    def psi_request_sessions(self, run=None) -> None:
        """Step 1 of both sessions. H(phone) holds no secret, so every subscriber is hashed once
        (`psi_exchange.hash_phones`) and blinded per session with that session's fresh secret;
        the tourism session takes every subscriber, the internet session those with
        consent_partner_share. `run(*calls)` may run the two sessions' requests at once."""
        hashed = psi_exchange.hash_phones(self.spark, self.read_raw(C.SUBSCRIBERS), "consent_partner_share")
        try:
            calls = (lambda: self.psi_request(TOURISM_SESSION, hashed=hashed),
                     lambda: self.psi_request(INTERNET_SESSION, hashed=hashed.filter(F.col("consent_partner_share"))))
            if run is None:
                for call in calls:
                    call()
            else:
                run(*calls)
        finally:
            hashed.unpersist()

    def align(self, tourism_matched, internet_matched) -> None:
        """Issue a user token per user; tell each partner the token for its matched session tokens."""
        run_key = psi_align.new_run_key()

        def tokenise(batches):
            for pdf in batches:
                yield pd.DataFrame({"phone": pdf["phone"], "token": psi_align.user_tokens(run_key, pdf["phone"])})

        consenting = self._subscribers().filter(F.col("consent_partner_share")).select("phone")
        phones = consenting.unionByName(tourism_matched.select("phone")).distinct()
        in_t = tourism_matched.select("phone", F.lit(True).alias("in_tourism"))
        in_i = internet_matched.select("phone", F.lit(True).alias("in_internet"))
        self.users = (phones.mapInPandas(tokenise, "phone string, token string")
                      .join(in_t, "phone", "left").join(in_i, "phone", "left")
                      .fillna(False, subset=["in_tourism", "in_internet"])
                      .persist(StorageLevel.MEMORY_AND_DISK))
        for partner, matched in (("tourism", tourism_matched), ("internet", internet_matched)):
            message = matched.select("phone", F.col("token").alias("session_token")).join(
                self.users.select("phone", "token"), "phone").select("session_token", "token")
            message.orderBy("session_token").write.mode("overwrite").parquet(str(self.message_path(partner)))

    def build_blocks(self) -> dict:
        plan = self.read_plan()
        split = F.to_date(F.lit(plan["split_date"]))
        subs = self._subscribers()
        history = self.spark.read.parquet(str(self.message_path("tourism_history"))).withColumn("_hist", F.lit(True))
        users = (self.users.join(history, "token", "left")
                 .withColumn("is_prospect", F.col("_hist").isNull()))
        sharing = users.join(subs.filter(F.col("consent_partner_share")), "phone")

        presence = (self.read_raw(C.PRESENCE).withColumn("phone", normalised_phone("phone"))
                    .filter(F.col("date") < split).join(sharing.select("phone", "token"), "phone"))
        interactions = (presence.groupBy("token", "area_id")
                        .agg(F.countDistinct("date").alias("days"), F.sum("dwell_minutes").cast("double").alias("dwell_minutes"))
                        .withColumn("confidence", weights.carrier_confidence(F.col("days"), F.col("dwell_minutes"))))
        trip_days = presence.groupBy("token").agg(F.countDistinct("date").cast("double").alias("trip_days"))

        cities = world.home_cities()
        gazetteer = self.spark.createDataFrame(
            [(str(c), float(d)) for c, d in zip(cities["city"], cities["distance_km"])], "home_city string, home_distance_km double")
        side = (sharing.select("token", "home_city", "age_band", "arpu_tier")
                .join(F.broadcast(gazetteer), "home_city", "left")
                .join(trip_days, "token", "left").fillna(0.0, subset=["trip_days"]))
        unknown = side.filter(F.col("home_distance_km").isNull()).count()
        if unknown:  # a city outside the gazetteer: the median distance, counted in the manifest
            median = side.approxQuantile("home_distance_km", [0.5], 0.01)
            side = side.fillna(median[0] if median else 0.0, subset=["home_distance_km"])
        self.unknown_home_cities = unknown
        return {
            "carrier/users": self.write_block(C.USERS, users),
            "carrier/interactions": self.write_block(C.CARRIER_INTERACTIONS, interactions),
            "carrier/user_features": self.write_block(C.CARRIER_USER_FEATURES, side),
        }
